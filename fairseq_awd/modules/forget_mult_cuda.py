"""Launch the fused ForgetMult CUDA kernels (``fairseq_awd/csrc/forget_mult_cuda.cu``).

cupy compiles the source with NVRTC on first use, once per device (no nvcc needed), and
the kernels run on PyTorch's current stream with no host synchronization. Tensors are
contiguous ``(T, N)`` views prepared by ``forget_mult``; pointers are passed as 64-bit
integers so that fp16/bf16 need no cupy dtype.
"""

import functools
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "forget_mult_cuda.cu"
KERNEL_TYPES = {
    torch.float32: "float",
    torch.float64: "double",
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
}
THREADS_PER_BLOCK = 256


@functools.cache
def _module(device_index: int):
    import cupy

    names = [
        f"forget_mult_{direction}<{ctype}>"
        for direction in ("forward", "backward")
        for ctype in KERNEL_TYPES.values()
    ]
    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(
            code=SOURCE.read_text(), options=("--std=c++14",), name_expressions=names
        )
        module.compile()
    return module


def _launch(direction: str, tensors: List[Optional[torch.Tensor]], steps: int, columns: int,
            reverse: bool, like: torch.Tensor) -> None:
    import cupy

    if like.dtype not in KERNEL_TYPES:
        raise ValueError(f"the CUDA ForgetMult kernel does not take {like.dtype}")
    device = like.device.index if like.device.index is not None else torch.cuda.current_device()
    kernel = _module(device).get_function(f"forget_mult_{direction}<{KERNEL_TYPES[like.dtype]}>")
    pointers = tuple(np.uint64(0 if t is None else t.data_ptr()) for t in tensors)
    blocks = (columns + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, device)
    with cupy.cuda.Device(device), stream:
        kernel(
            (blocks,),
            (THREADS_PER_BLOCK,),
            pointers + (np.int64(steps), np.int64(columns), np.int32(reverse)),
        )


def forward(f, x, input_gate, h0, reverse: bool) -> torch.Tensor:
    """``h (T, N)`` from contiguous ``f, x, input_gate (T, N)`` and ``h0 (N,)``."""
    h = torch.empty_like(x)
    _launch("forward", [f, x, input_gate, h0, h], f.size(0), f.size(1), reverse, x)
    return h


def backward(f, x, input_gate, h0, h, grad_h, reverse: bool):
    """``(grad_f, grad_x, grad_input_gate or None, grad_h0)`` for ``forward``'s inputs."""
    grad_f, grad_x = torch.empty_like(f), torch.empty_like(x)
    grad_gate = None if input_gate is None else torch.empty_like(input_gate)
    grad_h0 = torch.empty_like(h0)
    _launch(
        "backward",
        [f, x, input_gate, h0, h, grad_h, grad_f, grad_x, grad_gate, grad_h0],
        f.size(0),
        f.size(1),
        reverse,
        x,
    )
    return grad_f, grad_x, grad_gate, grad_h0
