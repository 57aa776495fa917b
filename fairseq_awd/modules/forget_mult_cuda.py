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
# What cupy compiles: every template instance, with these options of ours (cupy adds its
# own; tests/test_forget_mult_cuda_source.py compiles the same with NVRTC on the CPU).
KERNEL_NAMES = tuple(
    f"forget_mult_{direction}<{ctype}>"
    for direction in ("forward", "backward")
    for ctype in KERNEL_TYPES.values()
)
COMPILE_OPTIONS = ("--std=c++14",)


@functools.cache
def _module(device_index: int):
    import cupy

    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(
            code=SOURCE.read_text(), options=COMPILE_OPTIONS, name_expressions=KERNEL_NAMES
        )
        module.compile()
    return module


def _launch(direction: str, tensors: List[Optional[torch.Tensor]], steps: int, columns: int,
            reverse: bool, like: torch.Tensor) -> None:
    if like.dtype not in KERNEL_TYPES:
        raise ValueError(f"the CUDA ForgetMult kernel does not take {like.dtype}")
    name = f"forget_mult_{direction}<{KERNEL_TYPES[like.dtype]}>"
    pointers = tuple(np.uint64(0 if t is None else t.data_ptr()) for t in tensors)
    blocks = (columns + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
    arguments = pointers + (np.int64(steps), np.int64(columns), np.int32(reverse))
    _run_kernel(name, blocks, THREADS_PER_BLOCK, arguments, like.device)


def _run_kernel(name: str, blocks: int, threads: int, arguments: tuple,
                device: torch.device) -> None:
    """Launch kernel ``name`` on ``(blocks,) x (threads,)`` on PyTorch's current stream."""
    import cupy

    index = device.index if device.index is not None else torch.cuda.current_device()
    kernel = _module(index).get_function(name)
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(index).cuda_stream, index)
    with cupy.cuda.Device(index), stream:
        kernel((blocks,), (threads,), arguments)


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
