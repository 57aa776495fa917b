"""AWD-LSTM language model (Merity, Keskar and Socher 2017, arXiv 1708.02182) for fairseq."""

from dataclasses import dataclass

from fairseq.models import register_model, register_model_architecture
from torch import nn

from fairseq_awd.models.awd_rnn import (
    AWDRNNConfig,
    AWDRNNDecoder,
    AWDRNNLanguageModel,
    wikitext103_setting,
)
from fairseq_awd.modules import WeightDropLSTM


@dataclass
class AWDLSTMConfig(AWDRNNConfig):
    """The defaults of the reference awd-lstm-lm ``main.py`` (AWDRNNConfig's fields): 400
    embedding, 1150 hidden, 3 layers, ``--dropout 0.4 --dropouth 0.3 --dropouti 0.65
    --dropoute 0.1 --wdrop 0.5``, tied weights (24M parameters on PTB's 10k words).

    They are neither the reference README's PTB command, which adds ``--dropouti 0.4
    --dropouth 0.25`` (``scripts/recipes/awd.sh lstm-ptb`` passes both), nor quite the paper's
    PTB setting (dropouti 0.4): ``main.py``'s 0.65 is the paper's WikiText-2 value.
    """


class AWDLSTMDecoder(AWDRNNDecoder):
    """AWD decoder whose layers are weight-dropped LSTMs (state ``(h, c)``)."""

    @classmethod
    def build_layer(cls, index: int, input_size: int, output_size: int, cfg) -> nn.Module:
        return WeightDropLSTM(input_size, output_size, cfg.wdrop)


@register_model("awd_lstm_lm", dataclass=AWDLSTMConfig)
class AWDLSTMLanguageModel(AWDRNNLanguageModel):
    """AWD-LSTM: weight-dropped LSTM LM with embedding/locked dropout and tied softmax."""

    decoder_class = AWDLSTMDecoder


@register_model_architecture("awd_lstm_lm", "awd_lstm_lm_wt2")
def awd_lstm_lm_wt2(args):
    """The reference README's WikiText-2 command: ``main.py``'s defaults with 0.2 dropout
    between layers (``--dropouth 0.2``)."""
    args.dropouth = getattr(args, "dropouth", 0.2)


@register_model_architecture("awd_lstm_lm", "awd_lstm_lm_wt103")
def awd_lstm_lm_wt103(args):
    """WikiText-103 (267k words): the AWD-QRNN WikiText-103 setting with 4 LSTM layers."""
    args.decoder_layers = getattr(args, "decoder_layers", 4)
    wikitext103_setting(args)
