"""What AWD-LSTM and AWD-QRNN share (Merity, Keskar and Socher 2017, arXiv 1708.02182;
2018, arXiv 1803.08240): the AWD encoder (``fairseq_awd.modules.AWDEncoder``: embedding and
locked dropout around a stack of recurrent layers) under a tied output head (full softmax,
adaptive softmax for large vocabularies, or a mixture of softmaxes), stream state for
stateful BPTT and incremental state for generation."""

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from fairseq.data import Dictionary
from fairseq.dataclass import FairseqDataclass
from fairseq.models import FairseqIncrementalDecoder, FairseqLanguageModel
from torch import nn

from fairseq_awd.bf16_scoring import bf16_requested, cast_for_bf16_scoring
from fairseq_awd.checkpoint_compat import upgrade_decoder_state_dict
from fairseq_awd.dictionary_check import check_dictionary, dictionary_fingerprint
from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.modules import (
    AdaptiveSoftmaxHead,
    AWDEncoder,
    LayerStates,
    MixtureOfSoftmaxesHead,
    OutputHead,
    SoftmaxHead,
)
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


@contextlib.contextmanager
def option_errors(options: Dict[str, str]) -> Iterator[None]:
    """Turn a module constructor's ``ValueError`` about one of its arguments into the
    one-line FairseqAWDError about the command-line option that set it.

    ``options`` maps the start of the modules' messages (the argument's name, e.g.
    ``"dropout"``) to the option (``"--dropoutl"``): ``"dropout must be in [0, 1), got
    1.5"`` becomes ``"--dropoutl must be in [0, 1), got 1.5"``. The modules check their
    arguments, once, in their constructors; other errors pass unchanged."""
    try:
        yield
    except FairseqAWDError:
        raise
    except ValueError as err:
        message = str(err)
        for argument, option in options.items():
            if message.startswith(argument + " "):
                raise FairseqAWDError(option + message[len(argument):]) from None
        raise


def check_state_dict_dictionary(state_dict: Dict[str, torch.Tensor], prefix: str,
                                dictionary: Dictionary) -> None:
    """Raise FairseqAWDError if the AWD encoder in ``state_dict`` (keys under ``prefix``,
    e.g. ``"decoder.encoder."``) was trained with another dictionary than ``dictionary``."""
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
    dropouts and the dictionary's fingerprint. The dropouts are checked by ``AWDEncoder``
    (see ``build_encoder``), the layers' options by the layers' constructors."""
    for option, value in (("--decoder-layers", cfg.decoder_layers),
                          ("--decoder-embed-dim", cfg.decoder_embed_dim),
                          ("--decoder-hidden-size", cfg.decoder_hidden_size),
                          ("--decoder-out-embed-dim", cfg.decoder_out_embed_dim)):
        if value is not None and value < 1:
            raise FairseqAWDError(f"{option} must be at least 1, got {value}")
    embed_tokens = nn.Embedding(len(dictionary), cfg.decoder_embed_dim, dictionary.pad())
    sizes = [cfg.decoder_embed_dim] + [cfg.decoder_hidden_size] * (cfg.decoder_layers - 1)
    sizes.append(cfg.decoder_out_embed_dim or cfg.decoder_embed_dim)
    layers = [build_layer(i, sizes[i], sizes[i + 1], cfg) for i in range(cfg.decoder_layers)]
    return {"embed_tokens": embed_tokens, "layers": layers, "dropout": cfg.dropout,
            "dropouth": cfg.dropouth, "dropouti": cfg.dropouti, "dropoute": cfg.dropoute,
            "fingerprint": dictionary_fingerprint(dictionary)}


def build_encoder(arguments: Dict[str, Any]) -> AWDEncoder:
    """``AWDEncoder(**arguments)`` (see ``encoder_arguments``); a rate out of range is the
    FairseqAWDError naming its option (``--dropouth must be in [0, 1), got 1.0``)."""
    with option_errors({name: f"--{name}" for name in
                        ("dropout", "dropouth", "dropouti", "dropoute")}):
        return AWDEncoder(**arguments)


def build_output_head(cfg: AWDRNNConfig, vocab_size: int) -> OutputHead:
    """The output head for ``cfg``, the one place that picks it: a mixture of softmaxes
    with ``--mos-components``, a tied adaptive softmax with ``--adaptive-softmax-cutoff``,
    the full softmax otherwise. FairseqAWDError for options that do not fit."""
    out_dim = cfg.decoder_out_embed_dim or cfg.decoder_embed_dim
    mos_components = getattr(cfg, "mos_components", 0) or 0
    cutoffs = parse_adaptive_softmax_cutoff(getattr(cfg, "adaptive_softmax_cutoff", None),
                                            vocab_size)
    if mos_components < 0:
        raise FairseqAWDError(f"--mos-components must be 0 (one softmax) or the number of "
                              f"softmaxes to mix, got {mos_components}")
    if mos_components and cutoffs is not None:
        raise FairseqAWDError("--mos-components and --adaptive-softmax-cutoff do not go "
                              "together (the mixture needs every word's logit in each "
                              "component): drop one of them")
    if mos_components:
        dropoutl = getattr(cfg, "dropoutl", None)
        with option_errors({"dropout": "--dropoutl"}):
            head = MixtureOfSoftmaxesHead(out_dim, cfg.decoder_embed_dim, mos_components,
                                          cfg.dropouth if dropoutl is None else dropoutl)
    elif cutoffs is not None:
        with option_errors({"dropout": "--adaptive-softmax-dropout"}):
            head = AdaptiveSoftmaxHead(vocab_size, out_dim, cutoffs,
                                       getattr(cfg, "adaptive_softmax_dropout", 0.0))
    else:
        head = SoftmaxHead(out_dim)
    if not cfg.untie_weights and head.word_dim != cfg.decoder_embed_dim:
        raise FairseqAWDError(
            f"cannot tie weights: --decoder-out-embed-dim {out_dim} differs from "
            f"--decoder-embed-dim {cfg.decoder_embed_dim}; make them equal or pass "
            "--untie-weights"
        )
    return head


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


class AWDRNNDecoder(FairseqIncrementalDecoder):
    """The AWD encoder (``encoder``: embedding, dropouts, stack of recurrent layers) under
    one output head (``head``, a ``fairseq_awd.modules.output_heads.OutputHead``).

    The head reads the output word vectors ``word_vectors`` ``(V, D)`` (the encoder's
    embedding matrix itself when tied, else ``output_weight``) and the biases
    ``output_bias`` ``(V,)``, which the decoder owns and passes to it: every head shares
    them. Entries: ``encoder.*`` (what a classifier's ``encoder`` loads), ``head.*``,
    ``output_weight`` (untied only) and ``output_bias``; checkpoints of the earlier layout
    (the decoder was the encoder) are renamed on load (``upgrade_state_dict_named``).

    Subclasses build the layers (``build_layer``); each is called as
    ``output, state = layer(input, state)`` with ``state`` a pair of ``(1, B, size)``
    tensors or None. Tokens come in batch-major ``(B, T)``; the layers run time-major
    ``(T, B, C)``.

    ``forward`` returns ``(output, extra)``: ``output`` is the head's packed output ``(B, T,
    P)`` (logits ``(B, T, V)`` for the full softmax; see ``output_heads`` for the others and
    for ``--temperature``), ``extra`` holds the last layer's output before (``raw_output``)
    and after (``dropped_output``) its locked dropout, both ``(T, B, C)``, for the AR and TAR
    regularizers. ``get_normalized_probs`` gives exact ``(B, T, V)`` (log-)probabilities;
    ``output_nll`` (what the criterion calls) the NLL, without them where the head allows.

    Recurrent state is carried in two ways: fairseq's ``incremental_state`` (one token
    per call, reorderable for beam search), and named *streams* for stateful BPTT: a
    call with ``stream_id`` continues that stream from the detached state the previous
    call left, unless ``stream_start`` is True.
    """

    carries_stream_state = True

    def __init__(self, dictionary: Dictionary, cfg: AWDRNNConfig):
        super().__init__(dictionary)
        self.cfg = cfg
        # The weights are drawn in the order they always were: embedding, layers, the
        # head's constructor, the encoder's embedding init, the head's reset_parameters,
        # the untied word vectors. A seed gives the same model as before.
        arguments = encoder_arguments(dictionary, cfg, self.build_layer)
        head = build_output_head(cfg, len(dictionary))
        self.output_weight = (None if not cfg.untie_weights
                              else nn.Parameter(torch.empty(len(dictionary), head.word_dim)))
        self.output_bias = nn.Parameter(torch.zeros(len(dictionary)))
        self.encoder = build_encoder(arguments)
        self.head = head
        head.reset_parameters()
        if self.output_weight is not None:
            nn.init.uniform_(self.output_weight, -0.1, 0.1)
        self._streams: Dict[str, LayerStates] = {}

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

        x, raw_output, new_state = self.encoder(tokens, state)
        if incremental_state is not None:
            self._set_cached_state(incremental_state, new_state)
        elif stream_id is not None:
            self._streams[stream_id] = [(a.detach(), b.detach()) for a, b in new_state]
        out = self.output_layer(x).transpose(0, 1)
        return out, {"attn": None, "raw_output": raw_output, "dropped_output": x}

    def extract_features(self, tokens: torch.Tensor, state: Optional[LayerStates] = None):
        """The encoder on ``tokens (B, T)``: ``(dropped_output, raw_output, new_state)``,
        the last layer's output after and before its locked dropout, each ``(T, B, C)``,
        and the per-layer states."""
        return self.encoder(tokens, state)

    @property
    def word_vectors(self) -> torch.Tensor:
        """The output word vectors ``(V, D)``: the embedding matrix itself when tied."""
        if self.output_weight is None:
            return self.encoder.embed_tokens.weight
        return self.output_weight

    def output_layer(self, features: torch.Tensor) -> torch.Tensor:
        """Time-major features ``(T, B, C)`` -> the head's packed output ``(T, B, P)``."""
        return self.head.output(features, self.word_vectors, self.output_bias)

    def output_nll(self, net_output: Tuple[torch.Tensor, Any], target: torch.Tensor,
                   ignore_index: int = -100) -> torch.Tensor:
        """``-log p(target)`` of each position, ``(B, T)`` (0 where ``target ==
        ignore_index``), from ``forward``'s output and ``target (B, T)``, without the
        full-vocabulary distribution where the output head allows it."""
        return self.head.nll(net_output[0], target, self.word_vectors, self.output_bias,
                             ignore_index=ignore_index)

    def get_normalized_probs_scriptable(self, net_output: Tuple[torch.Tensor, Any],
                                        log_probs: bool,
                                        sample: Optional[Dict[str, torch.Tensor]] = None
                                        ) -> torch.Tensor:
        """(Log-)probabilities ``(B, T, V)`` over the whole vocabulary, exact for every head
        (``sample``'s target is not used)."""
        lprobs = self.head.log_probs(net_output[0], self.word_vectors, self.output_bias)
        return lprobs if log_probs else lprobs.exp()

    def upgrade_state_dict_named(self, state_dict: Dict[str, torch.Tensor], name: str):
        """Rename the entries of a checkpoint written when the decoder was the encoder
        (``decoder.embed_tokens.weight`` -> ``decoder.encoder.embed_tokens.weight``, ...;
        ``fairseq_awd.checkpoint_compat.upgraded_decoder_key``). fairseq calls this before
        loading a state dict."""
        upgrade_decoder_state_dict(state_dict, f"{name}." if name else "")
        return state_dict

    def max_positions(self) -> int:
        return DEFAULT_MAX_POSITIONS

    def _get_cached_state(self, incremental_state) -> Optional[LayerStates]:
        cached = self.get_incremental_state(incremental_state, "rnn_state")
        if cached is None:
            return None
        return [(cached[f"{i}a"], cached[f"{i}b"]) for i in range(len(self.encoder.layers))]

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
        layers = [list(layer.parameters()) for layer in reversed(decoder.encoder.layers)]
        in_layers = {id(p) for group in layers for p in group}
        return [[p for p in decoder.parameters() if id(p) not in in_layers], *layers]

    def prepare_for_inference_(self, cfg):
        """fairseq's preparation for inference, which ``fairseq-eval-lm``,
        ``fairseq-generate``, ``fairseq-interactive`` and the hub call with the run's
        configuration, plus bf16 scoring under ``--bf16`` (fairseq itself only casts for
        ``--fp16``): ``fairseq_awd.bf16_scoring``."""
        super().prepare_for_inference_(cfg)
        if bf16_requested(cfg):
            cast_for_bf16_scoring(self, type(self).__name__)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        self.upgrade_state_dict(state_dict)  # old keys renamed (fairseq does it again: no-op)
        check_state_dict_dictionary(state_dict, "decoder.encoder.", self.decoder.dictionary)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
