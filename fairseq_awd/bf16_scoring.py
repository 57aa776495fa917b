"""bf16 scoring: a trained model's forward in bfloat16, its scores in float32.

One concept, one place: ``cast_for_bf16_scoring`` casts a loaded model (parameters and
buffers) to bfloat16 for inference; every entry point that scores with a trained model
calls it when bf16 is asked for, in one way per entry point:

* ``fairseq-eval-lm``, ``fairseq-generate`` and ``fairseq-interactive`` (sampling, and
  ``--task translation_lm_fusion``): fairseq's ``--bf16`` (with ``--cpu`` on the CPU, as for
  training, ``fairseq_awd.tasks.cpu_bf16``). These commands call every model's
  ``prepare_for_inference_`` with the run's configuration, and the AWD models' version casts
  them when ``common.bf16`` is set (fairseq itself only casts for ``--fp16``); the
  ``translation_lm_fusion`` task casts its translation models too;
* ``fairseq-awd-eval``: the same ``--bf16`` (it takes fairseq-eval-lm's options), for plain
  and cache-pointer scoring; ``--dynamic-eval`` refuses it (``DYNAMIC_EVAL_REFUSAL``);
* ``fairseq-awd-rescore``: ``--bf16``, for the LM and the noisy channel;
* the hub: ``fairseq_awd.from_pretrained(..., dtype=torch.bfloat16)`` (``score``, ``sample``).

What stays float32: the output heads' log-probabilities (``log_softmax`` of bf16 logits
with ``dtype=float32``, ``upcast_half`` in the adaptive softmax and the mixture), the cache
pointer's attention and mixture (``ContinuousCache`` and ``mix_with_cache`` read the hidden
states and log-probabilities as float32), and every sum over tokens and sentences
(fairseq's ``eval_lm`` and ``SequenceScorer``, the rescorer's ``LMScorer`` and
``ChannelScorer``).
"""

import logging
from typing import Any, Optional, Union

import torch
from omegaconf import DictConfig
from torch import nn

from fairseq_awd.errors import FairseqAWDError

logger = logging.getLogger(__name__)

#: Why ``--dynamic-eval`` does not run in bf16 (one line, fairseq-awd-eval's refusal).
DYNAMIC_EVAL_REFUSAL = (
    "--dynamic-eval cannot run with --bf16: its steps move each weight by about 1e-4 of its "
    "value, below bf16's resolution (2^-8), so bf16 weights would round most of them away, "
    "and keeping fp32 weights would cost a full cast of the model per 5-token segment; "
    "drop --bf16 for dynamic evaluation"
)

DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def scoring_dtype(dtype: Union[None, str, torch.dtype]) -> torch.dtype:
    """The dtype a model scores in: ``None`` or float32 (the default), or bfloat16; given
    as a ``torch.dtype`` or its name (``"bf16"``, ``"bfloat16"``, ``"fp32"``, ``"float32"``).
    Anything else is refused with FairseqAWDError."""
    if dtype is None:
        return torch.float32
    resolved = DTYPE_NAMES.get(dtype) if isinstance(dtype, str) else dtype
    if resolved not in (torch.float32, torch.bfloat16):
        raise FairseqAWDError(f"dtype={dtype!r}: a model scores in torch.float32 (the "
                              "default) or torch.bfloat16")
    return resolved


def bf16_requested(cfg: Any) -> bool:
    """Whether the run's configuration asks for bf16 (``--bf16``): ``cfg`` is fairseq's run
    configuration (with a ``common`` group) or a group of it (e.g. a task's ``cfg.task``,
    whose omegaconf root is the run's); False for a configuration without one."""
    if isinstance(cfg, DictConfig):
        cfg = cfg._get_root()
    common = cfg.get("common") if hasattr(cfg, "get") else getattr(cfg, "common", None)
    return bool(common is not None and getattr(common, "bf16", False))


def is_bf16(model: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``model`` is bfloat16."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    return bool(tensors) and all(t.dtype == torch.bfloat16 for t in tensors)


def cast_for_bf16_scoring(model: nn.Module, what: Optional[str] = None) -> nn.Module:
    """Cast ``model``'s floating-point parameters and buffers to bfloat16, in place, for
    scoring: its matrix products then run in bf16 (AMX or AVX512-BF16 on the CPU), while
    the log-probabilities and their sums stay float32 (see the module). Returns ``model``;
    a model already in bf16 is left as it is. Not for training: fairseq's ``--bf16``
    training keeps float32 master weights (``FP16Optimizer``) instead."""
    if is_bf16(model):
        return model
    model.to(dtype=torch.bfloat16)
    decoder = getattr(model, "decoder", None)
    streams = getattr(decoder, "_streams", None)
    if streams:  # recurrent states carried from an fp32 run: restart the streams
        streams.clear()
    logger.info("bf16 scoring: %s runs in bfloat16 (log-probabilities and their sums in "
                "float32)", what or type(model).__name__)
    return model
