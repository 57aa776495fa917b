"""Let fairseq load its own checkpoints under torch>=2.6's ``weights_only=True`` default.

fairseq 0.12 calls ``torch.load`` without ``weights_only``; since torch 2.6 that refuses
the one non-tensor type fairseq checkpoints pickle: the ``argparse.Namespace`` in which
legacy components (fairseq's ``sgd``, ``lstm_lm``, ...) keep their options ("Unsupported
global: argparse.Namespace"). Instead of turning the safe loader off, fairseq's checkpoint
reader is wrapped so that exactly this type is allowed while it runs, and nowhere else.
"""

import argparse
import functools

import torch
from fairseq import checkpoint_utils

FAIRSEQ_CHECKPOINT_GLOBALS = [argparse.Namespace]


def allow_fairseq_checkpoints() -> None:
    """Wrap ``fairseq.checkpoint_utils.load_checkpoint_to_cpu`` once (idempotent).

    Every fairseq command that loads a checkpoint (train ``--restore-file``, eval-lm,
    generate, interactive, hub) goes through that function, looked up at call time.
    """
    original = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(original, "_fairseq_awd_wrapped", False):
        return

    @functools.wraps(original)
    def load_checkpoint_to_cpu(*args, **kwargs):
        with torch.serialization.safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS):
            return original(*args, **kwargs)

    load_checkpoint_to_cpu._fairseq_awd_wrapped = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
