"""DropConnect (Wan et al. 2013), the AWD models' weight drop (Merity et al. 2017,
section 2): ``W' = W * M / (1 - p)`` with ``M_ij ~ Bernoulli(1 - p)`` drawn afresh at every
training forward pass.

On the CPU, with the C++ extension built (``fairseq_awd/csrc/drop_connect_cpu.cpp``), the
mask comes from a counter-based generator (SplitMix64 at each weight's index) keyed by one
number drawn from torch's default generator, so ``torch.manual_seed`` and fairseq's
``--seed`` fix it: threads draw their parts independently, and the backward pass redraws
the mask from the key instead of keeping it. torch's CPU ``bernoulli_`` runs a serial
Mersenne twister except on Intel CPUs with MKL, and weight drop draws tens of millions of
numbers per update at the papers' sizes (docs/performance.md). Elsewhere (GPU, no
extension) it is ``F.dropout``.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

_KEY_RANGE = 2**63 - 1


def drop_connect(weight: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``weight * M / (1 - p)`` with a fresh Bernoulli(1 - p) mask ``M`` of ``weight``'s
    shape in training; ``weight`` itself otherwise or when ``p == 0``.

    Args:
        weight: any shape, any float dtype.
        p: drop probability in ``[0, 1)``.
        training: apply the mask only when True.
    """
    if not training or p == 0:
        return weight
    if not 0 < p < 1:
        raise ValueError(f"weight drop probability must be in [0, 1), got {p}")
    module = _cpu_extension() if weight.device.type == "cpu" else None
    if module is None:
        return F.dropout(weight, p, training=True)
    key = int(torch.randint(_KEY_RANGE, (1,)).item())
    return _DropConnect.apply(weight, 1.0 - p, key, module)


class _DropConnect(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, keep, key, module):
        ctx.keep, ctx.key, ctx.module = keep, key, module
        return module.apply(weight, keep, key)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        # d(W * M / keep)/dW = M / keep: the same mask, redrawn from the same key
        return ctx.module.apply(grad, ctx.keep, ctx.key), None, None, None


def _cpu_extension():
    try:
        from fairseq_awd import _drop_connect_cpu
    except ImportError:
        return None
    return _drop_connect_cpu
