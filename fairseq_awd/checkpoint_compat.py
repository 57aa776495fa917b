"""Let fairseq load its own checkpoints under torch>=2.6's ``weights_only=True`` default.

fairseq 0.12 calls ``torch.load`` without ``weights_only``; since torch 2.6 that refuses
the one non-tensor type fairseq checkpoints pickle: the ``argparse.Namespace`` in which
legacy components (fairseq's ``sgd``, ``lstm_lm``, ...) keep their options ("Unsupported
global: argparse.Namespace"). Instead of turning the safe loader off, fairseq's checkpoint
reader is wrapped so that exactly this type is allowed while it runs, and nowhere else.
The wrapper also turns an unreadable file (truncated, or not a fairseq checkpoint) into one
FairseqAWDError naming it and the other checkpoints next to it.

It also renames the entries of AWD language models written before their decoder held its
encoder and output head (``upgraded_decoder_key``): the one place that knows the old names.
"""

import argparse
import functools
import glob
import os
import pickle
import traceback
from typing import Any, Dict

import torch
from fairseq import checkpoint_utils

from fairseq_awd.errors import FairseqAWDError

FAIRSEQ_CHECKPOINT_GLOBALS = [argparse.Namespace]

# The first component of an AWD LM decoder's state-dict keys before the decoder held its
# encoder and output head (issue 30) -> its place now. ``output_weight`` and
# ``output_bias`` (the untied word vectors and the biases) kept their names.
LEGACY_DECODER_ENTRIES = {
    "embed_tokens": "encoder.embed_tokens",
    "layers": "encoder.layers",
    "dictionary_fingerprint": "encoder.dictionary_fingerprint",
    "adaptive_output": "head.softmax",
    "mos_output": "head.mixture",
}


def upgraded_decoder_key(key: str, prefix: str = "decoder.") -> str:
    """``key`` of an AWD LM's state dict under its current name, e.g.
    ``decoder.embed_tokens.weight`` -> ``decoder.encoder.embed_tokens.weight``,
    ``decoder.adaptive_output.cluster_weight`` -> ``decoder.head.softmax.cluster_weight``
    (``prefix``: where the decoder's entries are). Current keys come back unchanged."""
    if not key.startswith(prefix):
        return key
    first, dot, rest = key[len(prefix):].partition(".")
    return prefix + LEGACY_DECODER_ENTRIES.get(first, first) + dot + rest


def upgrade_decoder_state_dict(state_dict: Dict[str, Any], prefix: str = "decoder.") -> None:
    """Rename, in place, the entries of ``state_dict`` under ``prefix`` that an AWD LM
    decoder wrote before it held its encoder and output head (see ``upgraded_decoder_key``)."""
    for key in list(state_dict):
        new = upgraded_decoder_key(key, prefix)
        if new != key:
            state_dict[new] = state_dict.pop(key)


def _unreadable(err: Exception) -> str:
    """Why ``err`` means the file is no readable fairseq checkpoint, or "" if it does not:
    it was raised inside ``torch.load``, or directly in fairseq's upgrade of what was
    unpickled (a torch file without a checkpoint's entries, e.g. a bare state dict). A
    missing file (``open`` fails before ``torch.load``) is not one of them."""
    if isinstance(err, (MemoryError, FairseqAWDError)):
        return ""
    if isinstance(err, pickle.UnpicklingError) and "unsupported global" in str(err).lower():
        return ""  # a pickle that names a forbidden global: torch's own refusal says which
    frames = [frame for frame, _ in traceback.walk_tb(err.__traceback__)]
    if any(f.f_code.co_filename == torch.serialization.__file__ for f in frames):
        first = str(err).split(". ")[0].splitlines()[0][:150] if str(err) else "no more data"
        return f"{type(err).__name__}: {first}"
    if frames and frames[-1].f_code is checkpoint_utils._upgrade_state_dict.__code__:
        return "a torch file without a fairseq checkpoint's entries"
    return ""


def unreadable_checkpoint_error(path: str, reason: str) -> FairseqAWDError:
    """The one-line error for checkpoint ``path``, naming the other checkpoints beside it."""
    directory = os.path.dirname(os.path.abspath(path))
    others = [p for p in sorted(glob.glob(os.path.join(directory, "*.pt")))
              if os.path.realpath(p) != os.path.realpath(path)]
    if others:
        newest = max(others, key=os.path.getmtime)
        fix = (f"other checkpoints in {directory}: "
               f"{', '.join(os.path.basename(p) for p in others)}: give one instead "
               f"(--restore-file {newest} to resume training, --path to evaluate), or remove "
               f"{path}")
    else:
        fix = f"no other checkpoint in {directory}: remove {path} (fairseq-train then starts anew)"
    return FairseqAWDError(f"{path} is not a readable fairseq checkpoint (truncated, or "
                           f"another kind of file; {reason}); {fix}")


def allow_fairseq_checkpoints() -> None:
    """Wrap ``fairseq.checkpoint_utils.load_checkpoint_to_cpu`` once (idempotent).

    Every fairseq command that loads a checkpoint (train ``--restore-file``, eval-lm,
    generate, interactive, hub) goes through that function, looked up at call time.
    """
    original = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(original, "_fairseq_awd_wrapped", False):
        return

    @functools.wraps(original)
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        with torch.serialization.safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS):
            try:
                return original(path, *args, **kwargs)
            except Exception as err:
                reason = _unreadable(err)
                if not reason:
                    raise
                raise unreadable_checkpoint_error(path, reason) from err

    load_checkpoint_to_cpu._fairseq_awd_wrapped = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
