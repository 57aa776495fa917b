"""Let fairseq 0.12 run on numpy 2.

fairseq 0.12 uses two names that numpy 2 removed: ``np.compat.long`` (int64) in
``TokenBlockDataset`` with ``--sample-break-mode eos`` and in ``LanguagePairDataset`` with
``--num-batch-buckets``, and ``np.percentile(..., interpolation=)`` (now ``method=``) in
``data_utils.get_buckets``, which the latter calls. Instead of adding them back to numpy for
every program, the ``np`` that those three fairseq modules see is replaced by a view of
numpy that has them and is numpy in every other attribute. On numpy 1 nothing is changed.
"""

import types

import numpy as np
from fairseq.data import data_utils, language_pair_dataset, token_block_dataset

FAIRSEQ_MODULES_USING_NUMPY1_NAMES = (token_block_dataset, language_pair_dataset, data_utils)


class _NumpyWithNumpy1Names(types.ModuleType):
    """numpy, plus the numpy 1 spellings fairseq 0.12 uses."""

    compat = types.SimpleNamespace(long=np.int64)

    def __getattr__(self, name: str):
        return getattr(np, name)

    @staticmethod
    def percentile(a, q, *args, interpolation=None, **kwargs):
        if interpolation is not None:
            kwargs["method"] = interpolation
        return np.percentile(a, q, *args, **kwargs)


def allow_numpy2_in_fairseq() -> None:
    """Give fairseq's modules that use numpy 1 names a numpy that has them (idempotent)."""
    if hasattr(np, "compat"):
        return
    for module in FAIRSEQ_MODULES_USING_NUMPY1_NAMES:
        if not isinstance(module.np, _NumpyWithNumpy1Names):
            module.np = _NumpyWithNumpy1Names("numpy")
