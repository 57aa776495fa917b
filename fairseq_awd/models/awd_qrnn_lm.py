"""AWD-QRNN language model (Merity, Keskar and Socher 2018, arXiv 1803.08240) for fairseq."""

from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model, register_model_architecture
from torch import nn

from fairseq_awd.models.awd_rnn import (
    AWDRNNConfig,
    AWDRNNDecoder,
    AWDRNNLanguageModel,
    option_errors,
    wikitext103_setting,
)
from fairseq_awd.modules import QRNNLayer
from fairseq_awd.modules.qrnn import POOLINGS


@dataclass
class AWDQRNNConfig(AWDRNNConfig):
    """The AWD-QRNN PTB setting; the dropout defaults not set here are AWD-LSTM's."""

    decoder_hidden_size: int = field(
        default=1550, metadata={"help": "hidden size of every QRNN layer but the last"}
    )
    decoder_layers: int = field(default=4, metadata={"help": "number of QRNN layers"})
    dropouti: float = field(default=0.4, metadata={"help": "locked dropout on the embeddings"})
    wdrop: float = field(
        default=0.1, metadata={"help": "weight drop (DropConnect) on the QRNN gate projections"}
    )
    qrnn_window: int = field(
        default=2,
        metadata={"help": "convolution window (1 or 2) of the first QRNN layer; the others "
                  "use 1, as in AWD-QRNN"},
    )
    qrnn_pooling: ChoiceEnum(sorted(POOLINGS)) = field(
        default="fo", metadata={"help": "f-, fo- or ifo-pooling"}
    )
    zoneout: float = field(
        default=0.0, metadata={"help": "zoneout on the QRNN forget gates (0 in AWD-QRNN)"}
    )
    qrnn_init_gain: float = field(
        default=2.0,
        metadata={"help": "initialization of the QRNN gate projections: weights uniform with "
                  "std g/sqrt(fan_in) and zero biases, so that the input-dependent part of "
                  "each layer's output is not lost on the way up the stack (with 2, the "
                  "default, the QRNN leaves the unigram plateau within a few hundred updates "
                  "of the paper's SGD setting); 0: PyTorch's default init (uniform "
                  "+-1/sqrt(fan_in) weights and biases), as the reference QRNN, which sits "
                  "near the unigram model for most of the first PTB epoch "
                  "(docs/qrnn-learning.md)"},
    )


class AWDQRNNDecoder(AWDRNNDecoder):
    """AWD decoder whose layers are QRNNs (state ``(cell, last input)``)."""

    @classmethod
    def build_layer(cls, index: int, input_size: int, output_size: int, cfg) -> nn.Module:
        window = cfg.qrnn_window if index == 0 else 1
        with option_errors({"QRNN window": "--qrnn-window", "QRNN zoneout": "--zoneout",
                            "QRNN weight_drop": "--wdrop", "QRNN pooling": "--qrnn-pooling",
                            "QRNN init_gain": "--qrnn-init-gain"}):
            return QRNNLayer(input_size, output_size, window, str(cfg.qrnn_pooling),
                             cfg.zoneout, cfg.wdrop,
                             init_gain=getattr(cfg, "qrnn_init_gain", 2.0))


@register_model("awd_qrnn_lm", dataclass=AWDQRNNConfig)
class AWDQRNNLanguageModel(AWDRNNLanguageModel):
    """AWD-QRNN: QRNN layers with weight-dropped gate projections, AWD regularization."""

    decoder_class = AWDQRNNDecoder


@register_model_architecture("awd_qrnn_lm", "awd_qrnn_lm_wt2")
def awd_qrnn_lm_wt2(args):
    """The AWD-QRNN WikiText-2 setting: as PTB but 0.2 dropout between layers."""
    args.dropouth = getattr(args, "dropouth", 0.2)


@register_model_architecture("awd_qrnn_lm", "awd_qrnn_lm_wt103")
def awd_qrnn_lm_wt103(args):
    """The AWD-QRNN WikiText-103 setting: 4 QRNN layers of 2500 units, tied adaptive softmax."""
    wikitext103_setting(args)
