"""What AWD-LSTM and AWD-QRNN share (Merity, Keskar and Socher 2017, arXiv 1708.02182;
2018, arXiv 1803.08240): embedding and locked dropout around a stack of recurrent layers,
a tied softmax (full, or adaptive for large vocabularies), stream state for stateful BPTT
and incremental state for generation."""

import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.data import Dictionary
from fairseq.dataclass import FairseqDataclass
from fairseq.models import FairseqIncrementalDecoder, FairseqLanguageModel
from torch import nn

from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.modules import LockedDropout, TiedAdaptiveSoftmax, embedding_dropout
from fairseq_awd.modules.adaptive_softmax import check_cutoffs

# Per layer, the two tensors a layer carries ((h, c) for an LSTM, (cell, last input) for
# a QRNN), each (1, B, size).
LayerStates = List[Tuple[torch.Tensor, torch.Tensor]]
DEFAULT_MAX_POSITIONS = 100_000


@dataclass
class AWDRNNConfig(FairseqDataclass):
    decoder_embed_dim: int = field(default=400, metadata={"help": "word embedding size"})
    decoder_hidden_size: int = field(
        default=1150, metadata={"help": "hidden size of every recurrent layer but the last"}
    )
    decoder_layers: int = field(default=3, metadata={"help": "number of recurrent layers"})
    decoder_out_embed_dim: Optional[int] = field(
        default=None,
        metadata={"help": "output size of the last recurrent layer (default: --decoder-embed-dim, "
                  "which weight tying requires)"},
    )
    untie_weights: bool = field(
        default=False,
        metadata={"help": "do not tie the output softmax weights to the input embedding"},
    )
    dropout: float = field(
        default=0.4, metadata={"help": "locked dropout on the output of the last recurrent layer"}
    )
    dropouth: float = field(
        default=0.3, metadata={"help": "locked dropout between recurrent layers"}
    )
    dropouti: float = field(default=0.65, metadata={"help": "locked dropout on the embeddings"})
    dropoute: float = field(
        default=0.1, metadata={"help": "embedding dropout: drop whole words of the vocabulary"}
    )
    wdrop: float = field(
        default=0.5,
        metadata={"help": "weight drop (DropConnect): on the LSTM's hidden-to-hidden matrices, "
                  "on the QRNN's gate projections"},
    )
    adaptive_softmax_cutoff: Optional[str] = field(
        default=None,
        metadata={"help": "use an adaptive softmax: comma-separated word ids where its tail "
                  "clusters start, e.g. 2800,20000,76000 (ids are the frequency ranks of "
                  "fairseq-preprocess's dict.txt); every cluster's word vectors are rows of "
                  "the (tied) embedding; empty: full softmax"},
    )
    adaptive_softmax_dropout: float = field(
        default=0.0,
        metadata={"help": "dropout on the hidden vectors fed to the adaptive softmax's tail "
                  "clusters"},
    )
    # No --adaptive-softmax-factor: the tail clusters' word vectors are rows of the one
    # (V, E) embedding, so their size is E; shrinking it would need projections that the
    # tied split softmax of AWD-QRNN does not have.


def parse_adaptive_softmax_cutoff(value: Optional[str], vocab_size: int) -> Optional[List[int]]:
    """``"2800,20000,76000"`` -> ``[2800, 20000, 76000]``; None or empty -> None.

    Raises FairseqAWDError unless the cutoffs pass ``check_cutoffs`` (positive, strictly
    increasing, below ``vocab_size``).
    """
    if value is None or not str(value).strip():
        return None
    fix = (f"give comma-separated word ids below {vocab_size} (dict.txt plus fairseq's special "
           "symbols) such as 2800,20000,76000, or an empty value for the full softmax")
    try:
        cutoffs = [int(part) for part in str(value).split(",")]
    except ValueError:
        raise FairseqAWDError(f"--adaptive-softmax-cutoff: comma-separated integers expected, "
                              f"got '{value}'; {fix}") from None
    try:
        return check_cutoffs(cutoffs, vocab_size)
    except ValueError as err:
        raise FairseqAWDError(f"--adaptive-softmax-cutoff: {err}; {fix}") from None


def wikitext103_setting(args) -> None:
    """The AWD-QRNN WikiText-103 setting (Merity, Keskar and Socher 2018), for any AWD
    architecture: 2500 hidden units, light dropout, no embedding or weight drop, and the
    tied adaptive softmax cut at 2800, 20000 and 76000 words. Command-line values win."""
    args.decoder_hidden_size = getattr(args, "decoder_hidden_size", 2500)
    args.dropoute = getattr(args, "dropoute", 0.0)
    args.dropouth = getattr(args, "dropouth", 0.1)
    args.dropouti = getattr(args, "dropouti", 0.1)
    args.dropout = getattr(args, "dropout", 0.1)
    args.wdrop = getattr(args, "wdrop", 0.0)
    args.adaptive_softmax_cutoff = getattr(args, "adaptive_softmax_cutoff", "2800,20000,76000")


def dictionary_fingerprint(dictionary: Dictionary, num_symbols: Optional[int] = None) -> int:
    """CRC32 of the dictionary's symbols in order (of its first ``num_symbols`` if given):
    equal only for the same word-to-id map."""
    return zlib.crc32("\n".join(dictionary.symbols[:num_symbols]).encode("utf-8"))


def check_dictionary_fingerprint(state_dict: Dict[str, torch.Tensor], prefix: str,
                                 decoder: "AWDRNNDecoder") -> None:
    """Raise FairseqAWDError if ``state_dict`` (keys under ``prefix``, e.g. ``"decoder."``)
    was trained with another dictionary than ``decoder``'s."""
    key = prefix + "dictionary_fingerprint"
    if key in state_dict and int(state_dict[key]) != int(decoder.dictionary_fingerprint):
        raise FairseqAWDError(
            "the checkpoint was trained with a different dictionary than the data's "
            f"dict.txt ({state_dict[prefix + 'embed_tokens.weight'].size(0)} vs "
            f"{len(decoder.dictionary)} types, or the same types in another order); "
            "binarize the data with fairseq-preprocess --srcdict set to the dict.txt "
            "the model was trained with"
        )


def tag_layer_depths(model: nn.Module, groups: List[List[nn.Parameter]]) -> None:
    """Set ``p.layer_depth`` = the index of its group in ``groups`` (top first) on every
    parameter of ``model``, for ``discriminative_adam``: fairseq hands optimizers a flat
    list of parameters."""
    tagged = 0
    for depth, params in enumerate(groups):
        for p in params:
            p.layer_depth = depth
        tagged += len(params)
    assert tagged == len(list(model.parameters())), "a parameter is in no layer group"


class AWDRNNDecoder(FairseqIncrementalDecoder):
    """Embedding -> stack of recurrent layers -> (tied) softmax, AWD style.

    Subclasses build the layers (``build_layer``); each is called as
    ``output, state = layer(input, state)`` with ``state`` a pair of ``(1, B, size)``
    tensors or None. Tokens come in batch-major ``(B, T)``; the layers run time-major
    ``(T, B, C)``.

    ``forward`` returns ``(logits (B, T, V), extra)`` where ``extra`` holds the last
    layer's output before (``raw_output``) and after (``dropped_output``) its locked
    dropout, both ``(T, B, C)``, for the AR and TAR regularizers.

    With ``--adaptive-softmax-cutoff`` the output layer is a ``TiedAdaptiveSoftmax``
    (``adaptive_output``) over the rows of the embedding (or of the untied output
    matrix), and ``forward``'s first output is not logits but ``[h ; 1]`` ``(B, T, C + 1)``:
    the features ``h`` with a column of ones. fairseq's generator applies ``--temperature``
    by dividing that output in place, so the last column carries ``1 / temperature`` to
    ``get_normalized_probs``, which returns the exact ``log_softmax(log p / temperature)``
    over the whole vocabulary. The criterion gets the NLL from ``adaptive_nll`` without
    computing full-vocabulary probabilities. The attribute is not called
    ``adaptive_softmax``: fairseq's own code paths for that name expect
    ``fairseq.modules.AdaptiveSoftmax``.

    Recurrent state is carried in two ways: fairseq's ``incremental_state`` (one token
    per call, reorderable for beam search), and named *streams* for stateful BPTT: a
    call with ``stream_id`` continues that stream from the detached state the previous
    call left, unless ``stream_start`` is True.
    """

    carries_stream_state = True

    def __init__(self, dictionary: Dictionary, cfg: AWDRNNConfig):
        super().__init__(dictionary)
        out_dim = cfg.decoder_out_embed_dim or cfg.decoder_embed_dim
        tied = not cfg.untie_weights
        if tied and out_dim != cfg.decoder_embed_dim:
            raise FairseqAWDError(
                f"cannot tie weights: --decoder-out-embed-dim {out_dim} differs from "
                f"--decoder-embed-dim {cfg.decoder_embed_dim}; make them equal or pass "
                "--untie-weights"
            )
        if cfg.decoder_layers < 1:
            raise FairseqAWDError("--decoder-layers must be at least 1")
        for option in ("dropout", "dropouth", "dropouti", "dropoute", "wdrop",
                       "adaptive_softmax_dropout"):
            if not 0.0 <= getattr(cfg, option, 0.0) < 1.0:
                raise FairseqAWDError(
                    f"--{option.replace('_', '-')} must be in [0, 1), got {getattr(cfg, option)}"
                )
        cutoffs = parse_adaptive_softmax_cutoff(
            getattr(cfg, "adaptive_softmax_cutoff", None), len(dictionary)
        )
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(len(dictionary), cfg.decoder_embed_dim, dictionary.pad())
        sizes = [cfg.decoder_embed_dim] + [cfg.decoder_hidden_size] * (cfg.decoder_layers - 1)
        sizes.append(out_dim)
        self.layers = nn.ModuleList(
            self.build_layer(i, sizes[i], sizes[i + 1], cfg) for i in range(cfg.decoder_layers)
        )
        self.locked_dropout = LockedDropout()
        self.output_weight = None if tied else nn.Parameter(torch.empty(len(dictionary), out_dim))
        self.output_bias = nn.Parameter(torch.zeros(len(dictionary)))
        self.adaptive_output = None
        if cutoffs is not None:
            self.adaptive_output = TiedAdaptiveSoftmax(
                len(dictionary), out_dim, cutoffs, getattr(cfg, "adaptive_softmax_dropout", 0.0)
            )
        self.register_buffer(
            "dictionary_fingerprint", torch.tensor(dictionary_fingerprint(dictionary))
        )
        self._streams: Dict[str, LayerStates] = {}
        nn.init.uniform_(self.embed_tokens.weight, -0.1, 0.1)
        if self.output_weight is not None:
            nn.init.uniform_(self.output_weight, -0.1, 0.1)

    def build_layer(self, index: int, input_size: int, output_size: int, cfg) -> nn.Module:
        raise NotImplementedError

    def forward(
        self,
        prev_output_tokens: torch.Tensor,
        src_lengths: Optional[torch.Tensor] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[torch.Tensor]]]] = None,
        stream_id: Optional[str] = None,
        stream_start: bool = True,
        **unused,
    ):
        tokens = prev_output_tokens
        if incremental_state is not None:
            tokens = tokens[:, -1:]
            state = self._get_cached_state(incremental_state)
        elif stream_id is not None and not stream_start:
            state = self._streams.get(stream_id)
            if state is not None and state[0][0].size(1) != tokens.size(0):
                state = None
        else:
            state = None

        x, raw_output, new_state = self.extract_features(tokens, state)
        if incremental_state is not None:
            self._set_cached_state(incremental_state, new_state)
        elif stream_id is not None:
            self._streams[stream_id] = [(a.detach(), b.detach()) for a, b in new_state]
        out = self.output_layer(x).transpose(0, 1)
        return out, {"attn": None, "raw_output": raw_output, "dropped_output": x}

    def extract_features(self, tokens: torch.Tensor, state: Optional[LayerStates] = None):
        """Run the stack on ``tokens (B, T)``.

        Returns ``(dropped_output, raw_output, new_state)``: the last layer's output
        after and before its locked dropout, each ``(T, B, C)``, and the per-layer
        states.
        """
        cfg = self.cfg
        x = embedding_dropout(self.embed_tokens, tokens.t(), cfg.dropoute, self.training)
        x = self.locked_dropout(x, cfg.dropouti)
        new_state = []
        for i, layer in enumerate(self.layers):
            x, layer_state = layer(x, None if state is None else state[i])
            new_state.append(layer_state)
            if i < len(self.layers) - 1:
                x = self.locked_dropout(x, cfg.dropouth)
        raw_output = x
        return self.locked_dropout(x, cfg.dropout), raw_output, new_state

    @property
    def word_vectors(self) -> torch.Tensor:
        """The output word vectors ``(V, C)``: the embedding matrix itself when tied."""
        return self.embed_tokens.weight if self.output_weight is None else self.output_weight

    def output_layer(self, features: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` features -> logits ``(..., V)``; with the adaptive softmax, the
        features with a column of ones appended, ``(..., C + 1)`` (see the class doc)."""
        if self.adaptive_output is not None:
            return torch.cat([features, features.new_ones(*features.shape[:-1], 1)], dim=-1)
        return F.linear(features, self.word_vectors, self.output_bias)

    def adaptive_nll(self, net_output: Tuple[torch.Tensor, Any], target: torch.Tensor,
                     ignore_index: int = -100) -> torch.Tensor:
        """Adaptive-softmax NLL ``-log p(target)`` of each position, ``(B, T)`` (0 where
        ``target == ignore_index``), from ``forward``'s output and ``target (B, T)``."""
        if self.adaptive_output is None:
            raise RuntimeError("adaptive_nll needs a model built with --adaptive-softmax-cutoff")
        features = net_output[0][..., :-1]
        return self.adaptive_output(features, target, self.word_vectors, self.output_bias,
                                    ignore_index=ignore_index)

    def get_normalized_probs_scriptable(self, net_output: Tuple[torch.Tensor, Any],
                                        log_probs: bool,
                                        sample: Optional[Dict[str, torch.Tensor]] = None
                                        ) -> torch.Tensor:
        """(Log-)probabilities ``(B, T, V)`` over the whole vocabulary; exact with the
        adaptive softmax too (``sample``'s target is not used)."""
        if self.adaptive_output is None:
            return super().get_normalized_probs_scriptable(net_output, log_probs, sample)
        x = net_output[0]
        inv_temperature = x[..., -1:]
        features = x[..., :-1] / inv_temperature
        lprobs = self.adaptive_output.log_prob(features, self.word_vectors, self.output_bias)
        if not bool(inv_temperature.eq(1).all()):
            lprobs = torch.log_softmax(lprobs * inv_temperature.float(), dim=-1)
        return lprobs if log_probs else lprobs.exp_()

    def max_positions(self) -> int:
        return DEFAULT_MAX_POSITIONS

    def _get_cached_state(self, incremental_state) -> Optional[LayerStates]:
        cached = self.get_incremental_state(incremental_state, "rnn_state")
        if cached is None:
            return None
        return [(cached[f"{i}a"], cached[f"{i}b"]) for i in range(len(self.layers))]

    def _set_cached_state(self, incremental_state, state: LayerStates) -> None:
        flat = {}
        for i, (a, b) in enumerate(state):
            flat[f"{i}a"], flat[f"{i}b"] = a, b
        self.set_incremental_state(incremental_state, "rnn_state", flat)

    def reorder_incremental_state(self, incremental_state, new_order: torch.Tensor) -> None:
        cached = self.get_incremental_state(incremental_state, "rnn_state")
        if cached is None:
            return
        reordered = {k: v.index_select(1, new_order) for k, v in cached.items()}
        self.set_incremental_state(incremental_state, "rnn_state", reordered)


class AWDRNNLanguageModel(FairseqLanguageModel):
    """Base of the registered AWD models: refuses checkpoints of another dictionary."""

    decoder_class = AWDRNNDecoder

    def __init__(self, decoder: AWDRNNDecoder):
        super().__init__(decoder)
        tag_layer_depths(self, self.layer_groups())

    @classmethod
    def build_model(cls, cfg: AWDRNNConfig, task) -> "AWDRNNLanguageModel":
        return cls(cls.decoder_class(task.target_dictionary, cfg))

    def layer_groups(self) -> List[List[nn.Parameter]]:
        """The parameters by depth, top first, for discriminative fine-tuning (ULMFiT
        eq. 2): ``[embedding and output layer (tied)], [top layer], ..., [lowest layer]``."""
        decoder = self.decoder
        layers = [list(layer.parameters()) for layer in reversed(decoder.layers)]
        in_layers = {id(p) for group in layers for p in group}
        return [[p for p in decoder.parameters() if id(p) not in in_layers], *layers]

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        check_dictionary_fingerprint(state_dict, "decoder.", self.decoder)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
