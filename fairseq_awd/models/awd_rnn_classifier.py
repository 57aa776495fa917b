"""ULMFiT text classifiers (Howard and Ruder 2018, arXiv 1801.06146) on the AWD stacks.

The encoder is the AWD language models' ``AWDEncoder`` (embedding, embedding and locked
dropout, recurrent layers), with no output layer; its top layer's outputs are concat
pooled (eq. 5) and fed to ``PoolingClassifierHead``. ``--pretrained-lm`` initializes the
encoder from an AWD LM checkpoint of the same kind (the fine-tuned LM of section 3.2).
The model follows fairseq's classification-head protocol (``register_classification_head``,
``classification_heads``), so it trains with ``--task sentence_prediction --criterion
sentence_prediction`` (or ``--task awd_sentence_prediction``).
"""

import copy
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from fairseq import checkpoint_utils
from fairseq.data import Dictionary
from fairseq.dataclass import FairseqDataclass
from fairseq.models import ARCH_MODEL_NAME_REGISTRY, BaseFairseqModel
from omegaconf import II
from torch import nn

from fairseq_awd.checkpoint_compat import upgrade_decoder_state_dict
from fairseq_awd.dictionary_check import check_dictionary
from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.models.awd_rnn import (
    DEFAULT_MAX_POSITIONS,
    AWDRNNDecoder,
    build_encoder,
    check_state_dict_dictionary,
    encoder_arguments,
    tag_layer_depths,
)
from fairseq_awd.modules import AWDEncoder, PoolingClassifierHead, concat_pool, reverse_padded

logger = logging.getLogger(__name__)

# Symbols a classification dictionary may have after the LM's: fairseq's sentence_prediction
# task appends "<mask>" to input0/dict.txt.
EXTRA_SYMBOLS = {"<mask>"}
# Where an AWD LM's state dict keeps its encoder's entries.
LM_ENCODER = "decoder.encoder."


@dataclass
class ClassifierConfig(FairseqDataclass):
    """The options the classifiers add to their language model's."""

    pretrained_lm: Optional[str] = field(
        default=None,
        metadata={"help": "initialize the encoder from this AWD language model checkpoint "
                  "(of the same kind: awd_lstm_lm for awd_lstm_classifier, ...); the encoder "
                  "sizes are then the LM's, the dropouts this model's own options. With "
                  "--task awd_sentence_prediction the classifier's checkpoints reload without "
                  "this file; with fairseq's sentence_prediction it is read again on reload"},
    )
    reverse_tokens: bool = field(
        default=False,
        metadata={"help": "read each sentence right to left (its tokens reversed, the padding "
                  "left after them): the classifier of a backward LM, i.e. --pretrained-lm "
                  "trained with awd_language_modeling --reverse-tokens (the directions must "
                  "match)"},
    )
    classifier_hidden_dim: int = field(
        default=50, metadata={"help": "hidden size of the classifier head (ULMFiT: 50)"}
    )
    classifier_input_dropout: float = field(
        default=0.4,
        metadata={"help": "dropout on the concat-pooled features, before the head's first "
                  "linear layer (ULMFiT: 0.4)"},
    )
    classifier_dropout: float = field(
        default=0.1,
        metadata={"help": "dropout before the head's output layer (ULMFiT: 0.1)"},
    )
    # Set by fairseq's sentence_prediction task in build_model; not an option (the
    # recurrent encoder has no length limit of its own).
    max_positions: Optional[int] = II("task.max_positions")


def load_lm_checkpoint(path: str, expected_model: str
                       ) -> Tuple[Dict[str, torch.Tensor], Any, bool]:
    """``(model state dict, model config, reversed)`` of an ``expected_model`` checkpoint at
    ``path``, ``reversed`` True for a backward LM (``--reverse-tokens``); FairseqAWDError if
    the file is missing or holds another kind of model. The state dict has the current
    keys (the encoder's under ``decoder.encoder.``), whatever version wrote the file."""
    fix = f"give a checkpoint written by fairseq-train --task awd_language_modeling " \
          f"--arch {expected_model}"
    if not os.path.isfile(path):
        raise FairseqAWDError(f"--pretrained-lm {path}: no such file; {fix}")
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except FairseqAWDError as err:  # the loader's own message names the file and the fix
        raise FairseqAWDError(f"--pretrained-lm: {err}") from None
    except Exception as err:
        raise FairseqAWDError(f"--pretrained-lm {path} is not a fairseq checkpoint ({err}); "
                              f"{fix}") from err
    model_cfg = state["cfg"]["model"] if state.get("cfg") is not None else state.get("args")
    found = getattr(model_cfg, "_name", None) or getattr(model_cfg, "arch", None)
    found = ARCH_MODEL_NAME_REGISTRY.get(found, found)
    if found != expected_model:
        if found in ("awd_lstm_lm", "awd_qrnn_lm"):
            fix += f", or use --arch {found[:-len('lm')]}classifier"
        raise FairseqAWDError(f"--pretrained-lm {path} holds model {found}, but this "
                              f"classifier's encoder needs {expected_model}; {fix}")
    task_cfg = state["cfg"]["task"] if state.get("cfg") is not None else state.get("args")
    upgrade_decoder_state_dict(state["model"])
    return state["model"], model_cfg, bool(getattr(task_cfg, "reverse_tokens", False))


class AWDRNNClassifier(BaseFairseqModel):
    """``AWDEncoder`` ``(B, T)`` tokens -> top-layer outputs ``(T, B, C)`` -> concat pooling
    ``(B, 3C)`` -> a classification head -> logits ``(B, num_classes)``.

    Batches must be right-padded (fairseq's ``RightPadDataset``): the recurrent layers run
    left to right, so the outputs at real tokens never see the padding, and the pooling
    ignores padded positions. With ``--reverse-tokens`` each row's tokens are reversed
    before the encoder (the padding stays on the right). Every parameter carries a layer
    depth (see ``layer_groups``) for discriminative learning rates.
    """

    # The LM decoder whose build_layer makes the encoder's layers, and its model's name.
    decoder_class = AWDRNNDecoder
    lm_model_name = ""
    # Options of the LM that size the encoder, taken from --pretrained-lm's config.
    lm_size_fields: Tuple[str, ...] = ("decoder_embed_dim", "decoder_hidden_size",
                                       "decoder_layers", "decoder_out_embed_dim")

    def __init__(self, cfg, encoder: AWDEncoder, dictionary: Dictionary):
        super().__init__()
        self.cfg = cfg
        self.dictionary = dictionary
        self.encoder = encoder
        self.classification_heads = nn.ModuleDict()
        tag_layer_depths(self, self.layer_groups())

    @classmethod
    def build_model(cls, cfg, task) -> "AWDRNNClassifier":
        """The classifier for ``cfg``; with ``--pretrained-lm``, its encoder has the LM's
        sizes (also in the model's ``cfg``) and weights. The LM checkpoint is read here
        only (``awd_sentence_prediction`` takes the sizes from the model's ``cfg``)."""
        cfg = copy.deepcopy(cfg)
        dictionary = task.source_dictionary
        lm_state = None
        if cfg.pretrained_lm:
            lm_state, lm_cfg, lm_reversed = load_lm_checkpoint(cfg.pretrained_lm,
                                                               cls.lm_model_name)
            if lm_reversed != bool(getattr(cfg, "reverse_tokens", False)):
                direction = "a backward" if lm_reversed else "a forward"
                fix = "add" if lm_reversed else "drop"
                raise FairseqAWDError(
                    f"--pretrained-lm {cfg.pretrained_lm} is {direction} LM (trained with"
                    f"{'' if lm_reversed else 'out'} --reverse-tokens), but this classifier "
                    f"reads sentences {'left to right' if lm_reversed else 'right to left'}: "
                    f"{fix} --reverse-tokens")
            lm_size = lm_state[LM_ENCODER + "embed_tokens.weight"].size(0)
            check_dictionary(  # the classifier's: the LM's followed by at most <mask>
                dictionary, lm_size, int(lm_state[LM_ENCODER + "dictionary_fingerprint"]),
                f"--pretrained-lm {cfg.pretrained_lm} was trained with another dictionary "
                f"({lm_size} types) than the classification data's ({len(dictionary)} types, "
                "counting the <mask> that sentence_prediction adds, or the same types in "
                "another order); binarize input0 with fairseq-preprocess --only-source "
                "--srcdict LM_DATA/dict.txt, the dict.txt of the LM's data",
                extra_symbols=EXTRA_SYMBOLS,
            )
            cls.copy_lm_sizes(lm_cfg, cfg)
            logger.info("encoder from --pretrained-lm %s: %s", cfg.pretrained_lm,
                        ", ".join(f"{name}={getattr(cfg, name)}" for name in cls.lm_size_fields))
        encoder = build_encoder(encoder_arguments(dictionary, cfg, cls.decoder_class.build_layer))
        model = cls(cfg, encoder, dictionary)
        if lm_state is not None:
            model.load_pretrained_encoder(lm_state)
        return model

    @classmethod
    def copy_lm_sizes(cls, lm_cfg, cfg) -> None:
        """Set the encoder-sizing options of ``cfg`` to the LM config's ``lm_cfg``."""
        for name in cls.lm_size_fields:
            setattr(cfg, name, getattr(lm_cfg, name))

    def load_pretrained_encoder(self, lm_state: Dict[str, torch.Tensor]) -> None:
        """Copy every encoder entry from an AWD LM's state dict (current keys, see
        ``load_lm_checkpoint``), where the LM decoder's ``encoder`` (an ``AWDEncoder``)
        keeps them under the same names: the embedding rows of the LM's symbols (any extra
        row keeps its initialization) and all recurrent weights. The decoder's other
        entries (its output layer) are left out; an encoder entry the LM lacks, or an
        entry outside the LM's decoder, raises."""
        own = self.encoder.state_dict()
        lm_encoder = {key[len(LM_ENCODER):]: value for key, value in lm_state.items()
                      if key.startswith(LM_ENCODER)}
        missing = sorted(own.keys() - lm_encoder.keys())
        unexpected = sorted(key for key in lm_state if not key.startswith("decoder."))
        if missing or unexpected:
            raise FairseqAWDError(
                f"--pretrained-lm does not match the {self.lm_model_name} encoder (missing: "
                f"{missing}, unexpected: {unexpected}); give a checkpoint of this version's "
                f"fairseq-train --arch {self.lm_model_name}"
            )
        state = {key: lm_encoder[key] for key in own}
        embed = own["embed_tokens.weight"].clone()
        embed[: state["embed_tokens.weight"].size(0)] = state["embed_tokens.weight"]
        state.update({"embed_tokens.weight": embed,
                      "dictionary_fingerprint": own["dictionary_fingerprint"]})
        self.encoder.load_state_dict(state, strict=True)

    def layer_groups(self) -> List[List[nn.Parameter]]:
        """The parameters by depth, top first: ``[head(s)], [top recurrent layer], ...,
        [lowest recurrent layer], [embedding]``; list index = ``layer_depth`` (0 to L+1).
        ULMFiT's discriminative rates (eq. 2) and gradual unfreezing both go by it."""
        groups = [list(self.classification_heads.parameters())]
        groups += [list(layer.parameters()) for layer in reversed(self.encoder.layers)]
        groups.append([self.encoder.embed_tokens.weight])
        return groups

    def register_classification_head(self, name: str, num_classes: Optional[int] = None,
                                     inner_dim: Optional[int] = None, **kwargs) -> None:
        """Add ULMFiT's head ``name`` on the pooled ``(B, 3C)`` features (depth 0)."""
        cfg = self.cfg
        features = 3 * (cfg.decoder_out_embed_dim or cfg.decoder_embed_dim)
        self.classification_heads[name] = PoolingClassifierHead(
            features, inner_dim or cfg.classifier_hidden_dim, num_classes,
            cfg.classifier_input_dropout, cfg.classifier_dropout,
        )
        tag_layer_depths(self, self.layer_groups())

    def forward(self, src_tokens: torch.Tensor, src_lengths: Optional[torch.Tensor] = None,
                features_only: bool = True, classification_head_name: Optional[str] = None,
                **kwargs) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``src_tokens (B, T)`` -> logits ``(B, num_classes)`` of the named head, or the
        pooled features ``(B, 3C)`` without a head name; plus ``{"padding_mask": (B, T)}``."""
        padding_mask = src_tokens.eq(self.dictionary.pad())
        if bool((padding_mask[:, :-1] & ~padding_mask[:, 1:]).any()):
            raise FairseqAWDError("the AWD classifiers need right-padded batches (pad only "
                                  "after the tokens); use fairseq's RightPadDataset")
        if getattr(self.cfg, "reverse_tokens", False):  # absent from older checkpoints
            src_tokens = reverse_padded(src_tokens, padding_mask)
        features, _, _ = self.encoder(src_tokens)
        x = concat_pool(features, padding_mask)
        if classification_head_name is not None:
            x = self.classification_heads[classification_head_name](x)
        return x, {"padding_mask": padding_mask}

    def max_positions(self) -> int:
        return DEFAULT_MAX_POSITIONS

    def upgrade_state_dict_named(self, state_dict: Dict[str, torch.Tensor], name: str) -> None:
        """Register the checkpoint's heads this model lacks (sized from their weights) and
        keep the current weights of heads the checkpoint lacks."""
        super().upgrade_state_dict_named(state_dict, name)
        prefix = (name + "." if name else "") + "classification_heads."
        names = {k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)}
        for head in sorted(names - set(self.classification_heads)):
            num_classes = state_dict[f"{prefix}{head}.6.weight"].size(0)
            self.register_classification_head(
                head, num_classes, state_dict[f"{prefix}{head}.2.weight"].size(0)
            )
        for key, value in self.classification_heads.state_dict().items():
            state_dict.setdefault(prefix + key, value)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        check_state_dict_dictionary(state_dict, "encoder.", self.dictionary)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
