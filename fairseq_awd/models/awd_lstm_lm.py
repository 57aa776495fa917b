"""AWD-LSTM language model (Merity, Keskar and Socher 2017, arXiv 1708.02182) for fairseq."""

from dataclasses import dataclass

from fairseq.models import register_model, register_model_architecture
from torch import nn

from fairseq_awd.models.awd_rnn import (
    AWDRNNConfig,
    AWDRNNDecoder,
    AWDRNNLanguageModel,
    apply_defaults,
    option_errors,
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
        with option_errors({"weight dropout": "--wdrop"}):
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


@register_model_architecture("awd_lstm_lm", "awd_lstm_lm_mos")
def awd_lstm_lm_mos(args):
    """The MoS paper's PTB model (Yang et al. 2017; its README: ``--emsize 280 --nhid 960
    --nhidlast 620 --n_experts 15 --dropouti 0.4 --dropoutl 0.29 --dropouth 0.225``, 22M
    parameters); ``main.py``'s other defaults are AWD-LSTM's (dropout 0.4, dropoute 0.1,
    wdrop 0.5)."""
    apply_defaults(args, decoder_embed_dim=280, decoder_hidden_size=960,
                   decoder_out_embed_dim=620, mos_components=15, dropouti=0.4, dropouth=0.225,
                   dropoutl=0.29)


@register_model_architecture("awd_lstm_lm", "awd_lstm_lm_mos_wt2")
def awd_lstm_lm_mos_wt2(args):
    """The MoS paper's WikiText-2 model (its README: ``--emsize 300 --nhid 1150 --nhidlast
    650 --n_experts 15 --dropouti 0.55 --dropoutl 0.29 --dropouth 0.2``, 35M parameters)."""
    apply_defaults(args, decoder_embed_dim=300, decoder_hidden_size=1150,
                   decoder_out_embed_dim=650, mos_components=15, dropouti=0.55, dropouth=0.2,
                   dropoutl=0.29)
