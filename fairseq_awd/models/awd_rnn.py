"""What AWD-LSTM and AWD-QRNN share (Merity, Keskar and Socher 2017, arXiv 1708.02182;
2018, arXiv 1803.08240): the AWD encoder (``fairseq_awd.modules.AWDEncoder``: embedding and
locked dropout around a stack of recurrent layers) under a tied softmax (full, or adaptive
for large vocabularies), stream state for stateful BPTT and incremental state for
generation."""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.data import Dictionary
from fairseq.dataclass import FairseqDataclass
from fairseq.models import FairseqIncrementalDecoder, FairseqLanguageModel
from torch import nn

from fairseq_awd.dictionary_check import check_dictionary, dictionary_fingerprint
from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.modules import AWDEncoder, LayerStates, MixtureOfSoftmaxes, TiedAdaptiveSoftmax
from fairseq_awd.modules.adaptive_softmax import check_cutoffs
from fairseq_awd.optim.discriminative_adam import set_layer_depth

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
    mos_components: int = field(
        default=0,
        metadata={"help": "mixture of softmaxes (Yang et al. 2017): the number K of softmaxes "
                  "over the (tied) word vectors, mixed by a learned prior; 0: one softmax. "
                  "The last layer's output (--decoder-out-embed-dim, any size) is projected "
                  "into K contexts of --decoder-embed-dim with tanh"},
    )
    dropoutl: Optional[float] = field(
        default=None,
        metadata={"help": "locked dropout on the mixture of softmaxes' contexts (the MoS "
                  "paper's --dropoutl; default: --dropouth, as in its code)"},
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


def apply_defaults(args, **defaults) -> None:
    """Set each of ``defaults`` on ``args`` unless it was given (fairseq's architecture
    functions: command-line values win)."""
    for name, value in defaults.items():
        setattr(args, name, getattr(args, name, value))


def wikitext103_setting(args) -> None:
    """The AWD-QRNN WikiText-103 setting (Merity, Keskar and Socher 2018), for any AWD
    architecture: 2500 hidden units, light dropout, no embedding or weight drop, and the
    tied adaptive softmax cut at 2800, 20000 and 76000 words. Command-line values win."""
    apply_defaults(args, decoder_hidden_size=2500, dropoute=0.0, dropouth=0.1, dropouti=0.1,
                   dropout=0.1, wdrop=0.0, adaptive_softmax_cutoff="2800,20000,76000")


def check_state_dict_dictionary(state_dict: Dict[str, torch.Tensor], prefix: str,
                                dictionary: Dictionary) -> None:
    """Raise FairseqAWDError if the AWD encoder in ``state_dict`` (keys under ``prefix``,
    e.g. ``"decoder."``) was trained with another dictionary than ``dictionary``."""
    key = prefix + "dictionary_fingerprint"
    if key not in state_dict:
        return
    trained = state_dict[prefix + "embed_tokens.weight"].size(0)
    check_dictionary(
        dictionary, trained, int(state_dict[key]),
        "the checkpoint was trained with a different dictionary than the data's dict.txt "
        f"({trained} vs {len(dictionary)} types, or the same types in another order); "
        "binarize the data with fairseq-preprocess --srcdict set to the dict.txt the model "
        "was trained with",
    )


def encoder_arguments(dictionary: Dictionary, cfg: AWDRNNConfig,
                      build_layer: Callable[[int, int, int, Any], nn.Module]) -> Dict[str, Any]:
    """``AWDEncoder``'s arguments for ``cfg``: an embedding of ``dictionary``'s words,
    ``--decoder-layers`` layers ``build_layer(index, input_size, output_size, cfg)`` (input
    of layer 0: ``--decoder-embed-dim``; between layers: ``--decoder-hidden-size``; output
    of the top layer: ``--decoder-out-embed-dim``, by default the embedding size), the
    dropouts and the dictionary's fingerprint. FairseqAWDError for an option out of range."""
    if cfg.decoder_layers < 1:
        raise FairseqAWDError("--decoder-layers must be at least 1")
    for option in ("dropout", "dropouth", "dropouti", "dropoute", "wdrop"):
        if not 0.0 <= getattr(cfg, option, 0.0) < 1.0:
            raise FairseqAWDError(f"--{option} must be in [0, 1), got {getattr(cfg, option)}")
    embed_tokens = nn.Embedding(len(dictionary), cfg.decoder_embed_dim, dictionary.pad())
    sizes = [cfg.decoder_embed_dim] + [cfg.decoder_hidden_size] * (cfg.decoder_layers - 1)
    sizes.append(cfg.decoder_out_embed_dim or cfg.decoder_embed_dim)
    layers = [build_layer(i, sizes[i], sizes[i + 1], cfg) for i in range(cfg.decoder_layers)]
    return {"embed_tokens": embed_tokens, "layers": layers, "dropout": cfg.dropout,
            "dropouth": cfg.dropouth, "dropouti": cfg.dropouti, "dropoute": cfg.dropoute,
            "fingerprint": dictionary_fingerprint(dictionary)}


def tag_layer_depths(model: nn.Module, groups: List[List[nn.Parameter]]) -> None:
    """Tag every parameter of ``model`` with the index of its group in ``groups`` (top
    first) as its layer depth, for ``discriminative_adam``: fairseq hands optimizers a flat
    list of parameters."""
    tagged = 0
    for depth, params in enumerate(groups):
        for p in params:
            set_layer_depth(p, depth)
        tagged += len(params)
    assert tagged == len(list(model.parameters())), "a parameter is in no layer group"


class AWDRNNDecoder(AWDEncoder, FairseqIncrementalDecoder):
    """The AWD encoder (embedding, dropouts, stack of recurrent layers) -> (tied) softmax.

    The decoder is an ``AWDEncoder`` (a subclass, not a holder of one) so that the
    encoder's modules sit on the decoder itself: their state-dict keys are the ones AWD
    checkpoints have always had (``decoder.embed_tokens.weight``, ``decoder.layers.0.*``,
    ``decoder.dictionary_fingerprint``), the LM's encoder weights are exactly what a
    classifier's ``encoder`` (a plain ``AWDEncoder``) loads, and parameter names are those
    keys. The output layer (``output_weight``, ``output_bias``, ``adaptive_output``,
    ``mos_output``) and
    the carried state are the decoder's own.

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

    With ``--mos-components K`` the output layer is a ``MixtureOfSoftmaxes``
    (``mos_output``, Yang et al. 2017) over the same word vectors, and ``forward``'s first
    output is its packed contexts and prior logits with the same column of ones, ``(B, T,
    K * D + K + 1)``; ``get_normalized_probs`` mixes the K softmaxes exactly, and
    ``output_nll`` (what the criterion calls) needs no ``(B, T, V)`` distribution.

    Recurrent state is carried in two ways: fairseq's ``incremental_state`` (one token
    per call, reorderable for beam search), and named *streams* for stateful BPTT: a
    call with ``stream_id`` continues that stream from the detached state the previous
    call left, unless ``stream_start`` is True.
    """

    carries_stream_state = True

    def __init__(self, dictionary: Dictionary, cfg: AWDRNNConfig):
        out_dim = cfg.decoder_out_embed_dim or cfg.decoder_embed_dim
        tied = not cfg.untie_weights
        mos_components = getattr(cfg, "mos_components", 0) or 0
        if mos_components < 0:
            raise FairseqAWDError(f"--mos-components must be 0 (one softmax) or the number of "
                                  f"softmaxes to mix, got {mos_components}")
        if mos_components and getattr(cfg, "adaptive_softmax_cutoff", None):
            raise FairseqAWDError("--mos-components and --adaptive-softmax-cutoff do not go "
                                  "together (the mixture needs every word's logit in each "
                                  "component): drop one of them")
        dropoutl = getattr(cfg, "dropoutl", None)
        dropoutl = cfg.dropouth if dropoutl is None else dropoutl
        if not 0.0 <= dropoutl < 1.0:
            raise FairseqAWDError(f"--dropoutl must be in [0, 1), got {dropoutl}")
        # The word vectors' size: the mixture's contexts have the embedding's size.
        word_dim = cfg.decoder_embed_dim if mos_components else out_dim
        if tied and word_dim != cfg.decoder_embed_dim:
            raise FairseqAWDError(
                f"cannot tie weights: --decoder-out-embed-dim {out_dim} differs from "
                f"--decoder-embed-dim {cfg.decoder_embed_dim}; make them equal or pass "
                "--untie-weights"
            )
        adaptive_dropout = getattr(cfg, "adaptive_softmax_dropout", 0.0)
        if not 0.0 <= adaptive_dropout < 1.0:
            raise FairseqAWDError(
                f"--adaptive-softmax-dropout must be in [0, 1), got {adaptive_dropout}"
            )
        cutoffs = parse_adaptive_softmax_cutoff(
            getattr(cfg, "adaptive_softmax_cutoff", None), len(dictionary)
        )
        encoder = encoder_arguments(dictionary, cfg, self.build_layer)
        # Made in the order the weights were always drawn in (embedding, layers, adaptive
        # softmax, then the encoder's embedding init): a seed gives the same model as before.
        adaptive_output = None
        if cutoffs is not None:
            adaptive_output = TiedAdaptiveSoftmax(len(dictionary), out_dim, cutoffs,
                                                  adaptive_dropout)
        super().__init__(**encoder, dictionary=dictionary)
        self.cfg = cfg
        self.output_weight = None if tied else nn.Parameter(torch.empty(len(dictionary), word_dim))
        self.output_bias = nn.Parameter(torch.zeros(len(dictionary)))
        self.adaptive_output = adaptive_output
        self.mos_output = None
        if mos_components:
            self.mos_output = MixtureOfSoftmaxes(out_dim, word_dim, mos_components, dropoutl)
        self._streams: Dict[str, LayerStates] = {}
        if self.output_weight is not None:
            nn.init.uniform_(self.output_weight, -0.1, 0.1)

    @classmethod
    def build_layer(cls, index: int, input_size: int, output_size: int, cfg) -> nn.Module:
        """Recurrent layer ``index`` (0 at the bottom) of the stack (see ``AWDEncoder``)."""
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
            elif state is not None and state[0][0].device != tokens.device:  # from a checkpoint
                state = [(a.to(tokens.device), b.to(tokens.device)) for a, b in state]
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
        """The encoder's forward (``AWDEncoder.forward``; this class's ``forward`` is the
        decoder's) on ``tokens (B, T)``.

        Returns ``(dropped_output, raw_output, new_state)``: the last layer's output
        after and before its locked dropout, each ``(T, B, C)``, and the per-layer
        states.
        """
        return AWDEncoder.forward(self, tokens, state)

    @property
    def word_vectors(self) -> torch.Tensor:
        """The output word vectors ``(V, C)``: the embedding matrix itself when tied."""
        return self.embed_tokens.weight if self.output_weight is None else self.output_weight

    def output_layer(self, features: torch.Tensor) -> torch.Tensor:
        """Time-major ``(T, B, C)`` features -> logits ``(T, B, V)``; with the adaptive
        softmax, the features with a column of ones appended, ``(T, B, C + 1)``; with the
        mixture of softmaxes, its packed contexts and a column of ones, ``(T, B, K * D + K
        + 1)`` (see the class doc)."""
        if self.mos_output is not None:
            features = self.mos_output.contexts(features)
        elif self.adaptive_output is None:
            return F.linear(features, self.word_vectors, self.output_bias)
        return torch.cat([features, features.new_ones(*features.shape[:-1], 1)], dim=-1)

    def output_nll(self, net_output: Tuple[torch.Tensor, Any], target: torch.Tensor,
                   ignore_index: int = -100) -> torch.Tensor:
        """``-log p(target)`` of each position, ``(B, T)`` (0 where ``target ==
        ignore_index``), from ``forward``'s output and ``target (B, T)``, without the
        full-vocabulary distribution where the output layer allows it."""
        if self.adaptive_output is not None:
            return self.adaptive_nll(net_output, target, ignore_index)
        if self.mos_output is not None:
            return self.mos_output(net_output[0][..., :-1], target, self.word_vectors,
                                   self.output_bias, ignore_index=ignore_index)
        logits = net_output[0]
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1),
                               ignore_index=ignore_index, reduction="none").view(target.shape)

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
        adaptive softmax and the mixture of softmaxes too (``sample``'s target is not used)."""
        head = self.adaptive_output if self.mos_output is None else self.mos_output
        if head is None:
            return super().get_normalized_probs_scriptable(net_output, log_probs, sample)
        x = net_output[0]
        inv_temperature = x[..., -1:]
        features = x[..., :-1] / inv_temperature
        lprobs = head.log_prob(features, self.word_vectors, self.output_bias)
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

    def use_stream_states(self, states: Dict[str, LayerStates]) -> None:
        """Carry the stream states in ``states`` (``{stream_id: per-layer states}``), a dict
        that the ``awd_language_modeling`` task owns and puts into mid-epoch checkpoints."""
        self._streams = states


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
        check_state_dict_dictionary(state_dict, "decoder.", self.decoder.dictionary)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
