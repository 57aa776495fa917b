from . import (  # noqa: F401  (register the models and architectures)
    awd_lstm_classifier,
    awd_lstm_lm,
    awd_qrnn_classifier,
    awd_qrnn_lm,
)
