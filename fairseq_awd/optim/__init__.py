"""Optimizers and learning-rate schedulers of AWD-LSTM, registered with fairseq."""

from . import lr_scheduler, ntasgd  # noqa: F401
