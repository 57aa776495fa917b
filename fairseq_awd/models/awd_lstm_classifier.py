"""ULMFiT text classifier on an AWD-LSTM encoder (Howard and Ruder 2018, arXiv 1801.06146)."""

from dataclasses import dataclass

from fairseq.models import register_model

from fairseq_awd.models.awd_lstm_lm import AWDLSTMConfig, AWDLSTMDecoder
from fairseq_awd.models.awd_rnn_classifier import AWDRNNClassifier, ClassifierConfig


@dataclass
class AWDLSTMClassifierConfig(AWDLSTMConfig, ClassifierConfig):
    """AWD-LSTM's options (its output-layer ones unused) and the classifier's."""


@register_model("awd_lstm_classifier", dataclass=AWDLSTMClassifierConfig)
class AWDLSTMClassifier(AWDRNNClassifier):
    """Concat-pooled AWD-LSTM encoder with ULMFiT's classifier head."""

    decoder_class = AWDLSTMDecoder
    lm_model_name = "awd_lstm_lm"
