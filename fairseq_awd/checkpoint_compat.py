"""Let fairseq load its own checkpoints under torch>=2.6's ``weights_only=True`` default.

fairseq 0.12 calls ``torch.load`` without ``weights_only``; since torch 2.6 that
refuses the few non-tensor types a fairseq checkpoint pickles (``argparse.Namespace``
for legacy args, numpy scalars in the logged metrics). Instead of turning the safe
loader off, fairseq's checkpoint reader is wrapped so that exactly these types are
allowed while it runs, and nowhere else.
"""

import argparse
import functools

import numpy as np
import torch
from fairseq import checkpoint_utils

FAIRSEQ_CHECKPOINT_GLOBALS = [
    argparse.Namespace,
    np.dtype,
    np.core.multiarray.scalar,
    type(np.dtype(np.float64)),
    type(np.dtype(np.float32)),
    type(np.dtype(np.int64)),
]


def allow_fairseq_checkpoints() -> None:
    """Wrap ``fairseq.checkpoint_utils.load_checkpoint_to_cpu`` once (idempotent)."""
    original = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(original, "_fairseq_awd_wrapped", False):
        return

    @functools.wraps(original)
    def load_checkpoint_to_cpu(*args, **kwargs):
        with torch.serialization.safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS):
            return original(*args, **kwargs)

    load_checkpoint_to_cpu._fairseq_awd_wrapped = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
