"""Optimizers and learning-rate schedulers of AWD-LSTM and ULMFiT, registered with fairseq."""

from . import discriminative_adam, lr_scheduler, ntasgd  # noqa: F401
