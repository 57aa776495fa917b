from . import awd_lstm_lm  # noqa: F401  (registers awd_lstm_lm and its architectures)
