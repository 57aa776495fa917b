"""ForgetMult, the QRNN's recurrence (Bradbury et al. 2017, arXiv 1611.01576, section 2.1).

``h_t = g_t * x_t + (1 - f_t) * h_{t-1}`` element-wise, with ``g = f`` (f- and fo-pooling)
or an independent input gate ``g = i`` (ifo-pooling, where ``1 - f`` is the paper's
forget gate). Three implementations share one interface and are picked by
``backend="auto"``:

* ``"cuda"``: one fused kernel for forward and one for backward, compiled at run time by
  cupy (fp32/fp64, and fp16/bf16 with fp32 accumulation), on PyTorch's current stream;
* ``"cpu"``: the same loops in C++ (``fairseq_awd/csrc/forget_mult_cpu.cpp``, built at
  install), parallel over columns; fp32 and fp64, and fp16/bf16 read and written in their
  own dtype with the state and arithmetic in fp32;
* ``"reference"``: a plain PyTorch loop over time with autograd, used by the tests.
"""

import warnings
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

BACKENDS = ("auto", "cuda", "cpu", "reference")
HALF_DTYPES = (torch.float16, torch.bfloat16)


def forget_mult(
    f: torch.Tensor,
    x: torch.Tensor,
    h0: Optional[torch.Tensor] = None,
    *,
    input_gate: Optional[torch.Tensor] = None,
    reverse: bool = False,
    mask: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Run ForgetMult over the time axis.

    Args:
        f: forget gate ``(T, B, H)``, usually in (0, 1).
        x: candidate values ``(T, B, H)``.
        h0: initial state ``(B, H)``; zeros when None.
        input_gate: optional ``(T, B, H)`` gate ``g`` multiplying ``x``; ``f`` when None.
        reverse: run from ``t = T-1`` down to 0 (the backward direction of a
            bidirectional QRNN); ``h0`` is then the state after the last step.
        mask: optional ``(T, B)`` boolean, True at real tokens; at False positions the
            state is carried unchanged (``h_t = h_{t-1}``) and gets no update.
        backend: one of ``BACKENDS``.

    Returns:
        ``h`` of shape ``(T, B, H)``: the state after every step.
    """
    check_shapes(f, x, h0, input_gate, mask)
    if backend not in BACKENDS:
        raise ValueError(f"unknown ForgetMult backend {backend!r}; choose from {BACKENDS}")
    if h0 is None:
        h0 = x.new_zeros(x.shape[1:])
    if backend == "auto":
        backend = _auto_backend(x)
    if backend == "reference":
        return forget_mult_reference(f, x, h0, input_gate=input_gate, reverse=reverse, mask=mask)
    if mask is not None:
        keep = mask.unsqueeze(-1).to(f.dtype)
        f = f * keep  # f = 0 (and g = 0) carries the state through unchanged
        input_gate = None if input_gate is None else input_gate * keep
    return _ForgetMultFunction.apply(f, x, input_gate, h0, reverse, _kernels(backend, x))


def forget_mult_reference(
    f: torch.Tensor,
    x: torch.Tensor,
    h0: Optional[torch.Tensor] = None,
    *,
    input_gate: Optional[torch.Tensor] = None,
    reverse: bool = False,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The definition, one time step at a time; autograd provides the backward pass."""
    check_shapes(f, x, h0, input_gate, mask)
    h = x.new_zeros(x.shape[1:]) if h0 is None else h0
    steps = range(f.size(0) - 1, -1, -1) if reverse else range(f.size(0))
    outputs = [None] * f.size(0)
    for t in steps:
        gate = f[t] if input_gate is None else input_gate[t]
        new_h = gate * x[t] + (1 - f[t]) * h
        if mask is not None:
            new_h = torch.where(mask[t].unsqueeze(-1), new_h, h)
        outputs[t] = h = new_h
    return torch.stack(outputs)


def check_shapes(f, x, h0=None, input_gate=None, mask=None) -> None:
    """Raise ValueError naming the offending argument when shapes do not fit together."""
    if x.dim() != 3:
        raise ValueError(f"ForgetMult expects x of shape (T, B, H), got {tuple(x.shape)}")
    if f.shape != x.shape:
        raise ValueError(f"forget gate shape {tuple(f.shape)} differs from x {tuple(x.shape)}")
    if input_gate is not None and input_gate.shape != x.shape:
        raise ValueError(
            f"input gate shape {tuple(input_gate.shape)} differs from x {tuple(x.shape)}"
        )
    if h0 is not None and h0.shape != x.shape[1:]:
        raise ValueError(
            f"initial state shape {tuple(h0.shape)} does not match (B, H) = {tuple(x.shape[1:])}"
        )
    if mask is not None:
        check_mask(mask, x)


def check_mask(mask: torch.Tensor, x: torch.Tensor) -> None:
    """A padding mask must be bool ``(T, B)`` for ``x`` of shape ``(T, B, ...)``."""
    if mask.shape != x.shape[:2]:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match (T, B) = {tuple(x.shape[:2])}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True at real tokens), got {mask.dtype}")


def cpu_extension_available() -> bool:
    return _cpu_extension() is not None


def cuda_kernels_available() -> bool:
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


class _ForgetMultFunction(torch.autograd.Function):
    """Autograd glue around a kernel pair working on contiguous ``(T, N)`` views."""

    @staticmethod
    def forward(ctx, f, x, input_gate, h0, reverse, kernels):
        steps = f.size(0)
        flat = [None if t is None else t.contiguous().view(steps, -1) for t in (f, x, input_gate)]
        h0_flat = h0.contiguous().view(-1)
        h = kernels.forward(*flat, h0_flat, reverse)
        ctx.save_for_backward(*flat[:2], flat[2] if input_gate is not None else None, h0_flat, h)
        ctx.reverse, ctx.kernels, ctx.shape, ctx.h0_shape = reverse, kernels, x.shape, h0.shape
        return h.view(x.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):
        f, x, input_gate, h0, h = ctx.saved_tensors
        grad_h = grad_h.contiguous().view(h.shape)
        grad_f, grad_x, grad_gate, grad_h0 = ctx.kernels.backward(
            f, x, input_gate, h0, h, grad_h, ctx.reverse
        )
        shape = ctx.shape
        return (
            grad_f.view(shape),
            grad_x.view(shape),
            None if grad_gate is None else grad_gate.view(shape),
            grad_h0.view(ctx.h0_shape),
            None,
            None,
        )


def _cpu_extension():
    try:
        from fairseq_awd import _forget_mult_cpu
    except ImportError:
        return None
    return _forget_mult_cpu


def _auto_backend(x: torch.Tensor) -> str:
    if x.is_cuda:
        if cuda_kernels_available():
            return "cuda"
        _warn_once("cupy is not installed: ForgetMult runs a slow Python loop on the GPU; "
                   "install the fused kernel with pip install 'fairseq_awd[cuda13]' "
                   "(or [cuda12]: the cupy for torch.version.cuda)")
        return "reference"
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, *HALF_DTYPES):
        if cpu_extension_available():
            return "cpu"
        _warn_once("the C++ ForgetMult extension is not built: running a Python loop; "
                   "reinstall fairseq_awd with `make install`")
    return "reference"


def _kernels(backend: str, x: torch.Tensor):
    if backend == "cpu":
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64,
                                                     *HALF_DTYPES):
            raise ValueError(f"the cpu ForgetMult backend takes fp32/fp64/fp16/bf16 CPU "
                             f"tensors, got {x.dtype} on {x.device}")
        module = _cpu_extension()
        if module is None:
            raise ValueError("the C++ ForgetMult extension is not built; run `make install`")
        return module
    if not x.is_cuda:
        raise ValueError(f"the cuda ForgetMult backend takes CUDA tensors, got {x.device}")
    from fairseq_awd.modules import forget_mult_cuda

    return forget_mult_cuda


_warned = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)
