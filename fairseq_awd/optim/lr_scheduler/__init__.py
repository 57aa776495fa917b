"""Learning-rate schedulers of AWD-LSTM, registered with fairseq."""

from . import divide_at_epochs  # noqa: F401
