"""ULMFiT text classifier on an AWD-QRNN encoder (Howard and Ruder 2018, arXiv 1801.06146)."""

from dataclasses import dataclass

from fairseq.models import register_model

from fairseq_awd.models.awd_qrnn_lm import AWDQRNNConfig, AWDQRNNDecoder
from fairseq_awd.models.awd_rnn_classifier import AWDRNNClassifier, ClassifierConfig


@dataclass
class AWDQRNNClassifierConfig(AWDQRNNConfig, ClassifierConfig):
    """AWD-QRNN's options (its output-layer ones unused) and the classifier's."""


@register_model("awd_qrnn_classifier", dataclass=AWDQRNNClassifierConfig)
class AWDQRNNClassifier(AWDRNNClassifier):
    """Concat-pooled AWD-QRNN encoder with ULMFiT's classifier head."""

    decoder_class = AWDQRNNDecoder
    lm_model_name = "awd_qrnn_lm"
    lm_size_fields = AWDRNNClassifier.lm_size_fields + ("qrnn_window", "qrnn_pooling")
