"""Let fairseq load its own checkpoints under torch>=2.6's ``weights_only=True`` default.

fairseq 0.12 calls ``torch.load`` without ``weights_only``; since torch 2.6 that refuses
the one non-tensor type fairseq checkpoints pickle: the ``argparse.Namespace`` in which
legacy components (fairseq's ``sgd``, ``lstm_lm``, ...) keep their options ("Unsupported
global: argparse.Namespace"). Instead of turning the safe loader off, fairseq's checkpoint
reader is wrapped so that exactly this type is allowed while it runs, and nowhere else.
The wrapper also turns an unreadable file (truncated, or not a fairseq checkpoint) into one
FairseqAWDError naming it and a checkpoint next to it that it has checked is readable, and a
pickle the safe loader refuses (one that names e.g. ``os.system``) into one naming the file
and that global, without torch's advice to turn the safe loader off.

It also renames the entries of AWD language models written before their decoder held its
encoder and output head (``upgraded_decoder_key``): the one place that knows the old names.
"""

import argparse
import functools
import glob
import os
import pickle
import re
import stat
import traceback
from typing import Any, Dict, Optional

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
    missing file (``open`` fails before ``torch.load``) and a refused pickle
    (``refused_global``) are not one of them."""
    if isinstance(err, (MemoryError, FairseqAWDError)) or refused_global(err):
        return ""
    frames = [frame for frame, _ in traceback.walk_tb(err.__traceback__)]
    if any(f.f_code.co_filename == torch.serialization.__file__ for f in frames):
        first = str(err).split(". ")[0].splitlines()[0][:150] if str(err) else "no more data"
        return f"{type(err).__name__}: {first}"
    if frames and frames[-1].f_code is checkpoint_utils._upgrade_state_dict.__code__:
        return "a torch file without a fairseq checkpoint's entries"
    return ""


def refused_global(err: BaseException) -> str:
    """What torch's safe loader (``weights_only``) refused to unpickle, e.g. ``posix.system``
    (a pickle that would run a command), if ``err`` is that refusal; "" otherwise."""
    if not isinstance(err, pickle.UnpicklingError) or "weights only load failed" not in \
            str(err).lower():
        return ""
    # Other refusals ("Unsupported operand", e.g. a text file) mean a file that is no torch
    # pickle at all: _unreadable reports those.
    match = re.search(r"GLOBAL ([\w.]+)", str(err))
    return match.group(1) if match else ""


def refused_pickle_error(path: str, what: str) -> FairseqAWDError:
    """The one-line error for checkpoint ``path`` whose pickle names ``what``: it does not
    advise turning the safe loader off (the file may run code when unpickled)."""
    return FairseqAWDError(
        f"{path}: refused to load: its pickle names {what}, which the safe checkpoint loader "
        f"does not allow (a fairseq checkpoint holds only tensors and plain values; this file "
        f"could run code when unpickled); use a checkpoint written by fairseq-train from a "
        f"source you trust")


def checkpoint_updates(path: str) -> Optional[int]:
    """The number of updates of fairseq checkpoint ``path`` if it is readable, else None.

    Readable means: a regular file that torch's safe loader (``weights_only``, with the
    globals of fairseq checkpoints allowed) actually loads into a dict with a ``model``
    entry. The load maps the tensors (``mmap``) instead of reading them, so it costs the
    unpickling of the metadata; a file cut short lacks the zip directory at its end and
    fails. Files under ``/dev`` are never considered."""
    try:
        real = os.path.realpath(path)
        if real.startswith("/dev/") or not stat.S_ISREG(os.stat(real).st_mode):
            return None
        if os.path.getsize(real) == 0:
            return None
        with torch.serialization.safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS):
            try:
                state = torch.load(real, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                state = torch.load(real, map_location="cpu", weights_only=True)  # legacy
    except Exception:
        return None
    if not isinstance(state, dict) or "model" not in state:
        return None
    history = state.get("optimizer_history") or [{}]
    updates = history[-1].get("num_updates", 0) if isinstance(history[-1], dict) else 0
    return int(updates or 0)


def unreadable_checkpoint_error(path: str, reason: str) -> FairseqAWDError:
    """The one-line error for checkpoint ``path``: it recommends the most trained checkpoint
    beside it that ``checkpoint_updates`` has loaded, if any (never one under ``/dev``)."""
    directory = os.path.dirname(os.path.abspath(path))
    readable = []
    if not os.path.realpath(directory).startswith("/dev"):
        for other in glob.glob(os.path.join(glob.escape(directory), "*.pt")):
            if os.path.realpath(other) == os.path.realpath(path):
                continue
            updates = checkpoint_updates(other)
            if updates is not None:
                readable.append((updates, os.path.getmtime(other), other))
    if readable:
        best = max(readable)[2]
        fix = (f"{os.path.basename(best)} in {directory} is readable (checked): give it "
               f"instead (--restore-file {best} to resume training, --path to evaluate), or "
               f"remove {path}")
    elif not os.path.isfile(path) or os.path.realpath(path).startswith("/dev/"):
        fix = "give a checkpoint file written by fairseq-train"  # never "remove /dev/null"
    else:
        fix = f"no readable checkpoint in {directory}: remove {path} (fairseq-train then " \
              f"starts anew)"
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
                what = refused_global(err)
                if what:  # from None: torch's text advises turning the safe loader off
                    raise refused_pickle_error(path, what) from None
                reason = _unreadable(err)
                if not reason:
                    raise
                raise unreadable_checkpoint_error(path, reason) from err

    load_checkpoint_to_cpu._fairseq_awd_wrapped = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
