from . import awd_lstm_lm, awd_qrnn_lm  # noqa: F401  (register the models and architectures)
