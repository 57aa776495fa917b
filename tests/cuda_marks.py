"""``@needs_cuda``: the GPU tests. Marked ``cuda`` (``pytest -m cuda`` runs only them, as
``scripts/gpu_check.sh`` does) and skipped where there is no GPU or no cupy."""

import pytest

from fairseq_awd.modules.forget_mult import cuda_kernels_available


def needs_cuda(test):
    skip = pytest.mark.skipif(not cuda_kernels_available(), reason="needs a GPU and cupy")
    return pytest.mark.cuda(skip(test))
