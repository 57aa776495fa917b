"""The CUDA ForgetMult kernel (``fairseq_awd/csrc/forget_mult_cuda.cu``) without a GPU.

* Compiled: NVRTC, the compiler cupy runs, builds the source with the names and options
  ``forget_mult_cuda.py`` gives cupy (plus those cupy adds) for every dtype, to a cubin
  for every architecture the installed NVRTC supports and to PTX for compute_80/90. NVRTC
  comes from the ``cuda-check`` extra (``nvidia-cuda-nvrtc`` + ``cuda-bindings``, which run
  without a GPU or driver; ``make install`` installs it).
* Executed: the same source built as host C++ (``csrc/forget_mult_cuda_host.cpp``) and
  launched through ``forget_mult_cuda.py``'s own launcher (only cupy's launch call is
  replaced), forward and backward through ``forget_mult``, against the reference loop and
  the C++ CPU kernel, with guard bytes around every buffer to catch writes out of bounds.
"""

import ctypes
import importlib
import shutil
import subprocess

import numpy as np
import pytest
import torch
from test_forget_mult import COMBOS, assert_gradcheck, call

from fairseq_awd.modules import forget_mult_cuda
from fairseq_awd.modules.forget_mult import cpu_extension_available
from fairseq_awd.modules.forget_mult_cuda import (
    COMPILE_OPTIONS,
    KERNEL_NAMES,
    KERNEL_TYPES,
    SOURCE,
    THREADS_PER_BLOCK,
)

HOST_SOURCE = SOURCE.parent / "forget_mult_cuda_host.cpp"
# cupy/cuda/compiler.py adds these to every RawModule it builds with NVRTC, and -arch=sm_XX
# for the device's compute capability (a cubin), or compute_XX with CUPY_COMPILE_WITH_PTX
CUPY_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")
PTX_ARCHS = ("compute_80", "compute_90")


# ------------------------------------------------------------------------- NVRTC compile


def nvrtc_or_skip():
    return pytest.importorskip(
        "cuda.bindings.nvrtc",
        reason="NVRTC is not installed: pip install -e '.[cuda-check]' (make install does)",
    )


def nvrtc_compile(nvrtc, arch: str):
    """Compile SOURCE for ``arch`` as cupy does: ``(binary, {name: lowered name}, log)``."""

    def check(result):
        error, *values = result
        assert error == nvrtc.nvrtcResult.NVRTC_SUCCESS, nvrtc.nvrtcGetErrorString(error)
        return values[0] if len(values) == 1 else values

    program = check(nvrtc.nvrtcCreateProgram(SOURCE.read_bytes(), SOURCE.name.encode(), 0,
                                             [], []))
    try:
        for name in KERNEL_NAMES:
            check(nvrtc.nvrtcAddNameExpression(program, name.encode()))
        options = [o.encode() for o in (*COMPILE_OPTIONS, *CUPY_OPTIONS, f"-arch={arch}")]
        (error,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
        log = b" " * check(nvrtc.nvrtcGetProgramLogSize(program))
        check(nvrtc.nvrtcGetProgramLog(program, log))
        log = log.rstrip(b"\0 ").decode()
        assert error == nvrtc.nvrtcResult.NVRTC_SUCCESS, f"{arch}: {log}"
        lowered = {name: check(nvrtc.nvrtcGetLoweredName(program, name.encode())).decode()
                   for name in KERNEL_NAMES}
        if arch.startswith("sm_"):
            binary = b" " * check(nvrtc.nvrtcGetCUBINSize(program))
            check(nvrtc.nvrtcGetCUBIN(program, binary))
        else:
            binary = b" " * check(nvrtc.nvrtcGetPTXSize(program))
            check(nvrtc.nvrtcGetPTX(program, binary))
        return binary, lowered, log
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def test_kernel_names_cover_every_direction_and_dtype():
    assert len(KERNEL_NAMES) == 2 * len(KERNEL_TYPES) == 8
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for direction in ("forward", "backward"):
            assert f"forget_mult_{direction}<{KERNEL_TYPES[dtype]}>" in KERNEL_NAMES


def test_cubin_for_every_architecture_nvrtc_supports():
    nvrtc = nvrtc_or_skip()
    error, archs = nvrtc.nvrtcGetSupportedArchs()
    assert error == nvrtc.nvrtcResult.NVRTC_SUCCESS and archs
    for arch in archs:
        cubin, lowered, log = nvrtc_compile(nvrtc, f"sm_{arch}")
        assert "warning" not in log.lower(), f"sm_{arch}: {log}"
        assert cubin.startswith(b"\x7fELF")
        for name, symbol in lowered.items():  # every instance is in the cubin's symbols
            assert symbol.encode() in cubin, f"sm_{arch}: {name} ({symbol}) missing"


@pytest.mark.parametrize("arch", PTX_ARCHS)
def test_ptx_defines_every_kernel(arch):
    nvrtc = nvrtc_or_skip()
    ptx, lowered, log = nvrtc_compile(nvrtc, arch)
    ptx = ptx.rstrip(b"\0").decode()
    assert "warning" not in log.lower(), log
    for name, symbol in lowered.items():
        assert f".entry {symbol}(" in ptx, f"{arch}: no kernel entry for {name}"
    # fp16 goes through the conversion instructions, not a library call
    assert "cvt.f32.f16" in ptx and "cvt.rn.f16.f32" in ptx


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_nvcc_compiles_every_kernel_type(tmp_path):
    """Where nvcc is installed (the GPU machine): the same instances through nvcc."""
    lines = [SOURCE.read_text()]
    for t in KERNEL_TYPES.values():
        lines.append(f"template __global__ void forget_mult_forward<{t}>("
                     + f"const {t}*, " * 4 + f"{t}*, long long, long long, int);")
        lines.append(f"template __global__ void forget_mult_backward<{t}>("
                     + f"const {t}*, " * 6 + f"{t}*, " * 4 + "long long, long long, int);")
    source = tmp_path / "forget_mult_instances.cu"
    source.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        ["nvcc", "-std=c++14", "--cubin", "-arch=sm_80", "-o", str(tmp_path / "k.cubin"),
         str(source)], capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "k.cubin").stat().st_size > 0


# ---------------------------------------------------------------- the kernel on the host

GUARD_VALUE = 0xA5
ITEM_SIZES = {"float": 4, "double": 8, "Half": 2, "BFloat16": 2}


@pytest.fixture(scope="module")
def host_library(tmp_path_factory):
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("needs g++ (make install builds the C++ extension with it)")
    library = tmp_path_factory.mktemp("forget_mult_cuda_host") / "forget_mult_cuda_host.so"
    proc = subprocess.run(
        [compiler, "-std=c++14", "-O1", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
         "-o", str(library), str(HOST_SOURCE)], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ctypes.CDLL(str(library))


@pytest.fixture
def cuda_kernels_on_host(monkeypatch, host_library):
    """``forget_mult(..., backend="cuda")`` on CPU tensors runs the host build: everything
    of the CUDA path but cupy's launch. Returns the list of launches ``(name, blocks)``."""
    launches = []

    def run_kernel(name, blocks, threads, arguments, device):
        *pointers, steps, columns, reverse = arguments
        # the widths the kernels declare: 64-bit pointers and sizes, a 32-bit flag
        assert all(type(p) is np.uint64 for p in pointers)
        assert type(steps) is np.int64 and type(columns) is np.int64
        assert type(reverse) is np.int32
        assert threads == THREADS_PER_BLOCK and blocks * threads >= columns
        direction, ctype = name[len("forget_mult_"):-1].split("<")
        function = getattr(host_library, f"forget_mult_{direction}_{ctype}")
        # h0 (and grad_h0 in backward) hold one row, every other buffer (T, N)
        rows = [1 if i in (3, 9) else int(steps) for i in range(len(pointers))]
        sizes = [r * int(columns) * ITEM_SIZES[ctype] for r in rows]
        run_guarded(function, blocks, threads, pointers, sizes, ITEM_SIZES[ctype],
                    (ctypes.c_longlong(int(steps)), ctypes.c_longlong(int(columns)),
                     ctypes.c_int(int(reverse))), name)
        launches.append((name, blocks))

    fm = importlib.import_module("fairseq_awd.modules.forget_mult")
    kernels = fm._kernels
    monkeypatch.setattr(forget_mult_cuda, "_run_kernel", run_kernel)
    monkeypatch.setattr(
        fm, "_kernels", lambda backend, x: forget_mult_cuda if backend == "cuda" else
        kernels(backend, x)
    )
    return launches


def run_guarded(function, blocks, threads, pointers, sizes, item_size, tail, name):
    """Run on copies of the buffers with guard bytes on both sides, then copy them back.
    The guards are as long as the launch has threads, so that a thread past the last
    column writes into them, not into other memory."""
    guard = blocks * threads * item_size
    copies = []
    for pointer, size in zip(pointers, sizes):
        if int(pointer) == 0:  # no input gate
            copies.append(None)
            continue
        buffer = np.full(size + 2 * guard, GUARD_VALUE, dtype=np.uint8)
        ctypes.memmove(buffer.ctypes.data + guard, int(pointer), size)
        copies.append(buffer)
    function.restype = None
    function(ctypes.c_uint(blocks), ctypes.c_uint(threads),
             *[None if c is None else ctypes.c_void_p(c.ctypes.data + guard)
               for c in copies], *tail)
    for pointer, size, buffer in zip(pointers, sizes, copies):
        if buffer is None:
            continue
        assert (buffer[:guard] == GUARD_VALUE).all(), f"{name} wrote before a buffer"
        assert (buffer[-guard:] == GUARD_VALUE).all(), f"{name} wrote past a buffer"
        ctypes.memmove(int(pointer), buffer.ctypes.data + guard, size)


# (T, B, H): 132 columns (under one block), one step, a block and one more, one column
SHAPES = [(40, 4, 33), (1, 3, 100), (7, 1, THREADS_PER_BLOCK + 1), (5, 1, 1)]


def inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    steps, batch, hidden = shape
    f = torch.rand(shape, generator=g)
    x, gate = torch.randn(shape, generator=g), torch.rand(shape, generator=g)
    h0 = torch.randn(batch, hidden, generator=g)
    mask = torch.rand(steps, batch, generator=g) > 0.3
    grad = torch.randn(shape, generator=g)
    return [t.to(dtype) for t in (f, x, gate, h0)], mask, grad.to(dtype)


def run(backend, tensors, mask, grad, use_gate, reverse, use_mask):
    """``(h, [grad_f, grad_x, grad_gate or None, grad_h0])`` of one backend."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    h = call(backend, *leaves, mask, use_gate, reverse, use_mask)
    grads = torch.autograd.grad(h, leaves, grad, allow_unused=True)
    return h.detach(), list(grads)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("use_gate,reverse,use_mask", COMBOS)
def test_host_build_matches_reference_and_cpu_kernel_fp32(
    cuda_kernels_on_host, shape, use_gate, reverse, use_mask
):
    tensors, mask, grad = inputs(shape, torch.float32)
    got = run("cuda", tensors, mask, grad, use_gate, reverse, use_mask)
    columns = shape[1] * shape[2]
    blocks = -(-columns // THREADS_PER_BLOCK)
    assert cuda_kernels_on_host == [("forget_mult_forward<float>", blocks),
                                    ("forget_mult_backward<float>", blocks)]
    backends = ["reference", "cpu"] if cpu_extension_available() else ["reference"]
    for backend in backends:
        expected = run(backend, tensors, mask, grad, use_gate, reverse, use_mask)
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-6)
        for g, e in zip(got[1], expected[1]):
            if e is None:
                assert g is None
            else:  # gradients sum over up to 40 steps
                torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("use_gate,reverse,use_mask", COMBOS)
def test_host_build_rounds_the_fp32_result_in_half_precision(
    cuda_kernels_on_host, dtype, use_gate, reverse, use_mask
):
    """fp16/bf16 in and out, fp32 inside: each output is the fp32 loop on the same (16-bit)
    inputs, rounded once (a one-unit difference where fp32 summation orders differ). The
    backward reads the states back from the stored (rounded) output, so the gradients are
    the fp32 ones to within the rounding of those states: ``eps`` of the largest gradient."""
    tensors, mask, grad = inputs(SHAPES[0], dtype)
    h, grads = run("cuda", tensors, mask, grad, use_gate, reverse, use_mask)
    assert h.dtype == dtype
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    expected_h, expected_grads = run(
        "reference", [t.to(wide) for t in tensors], mask, grad.to(wide), use_gate, reverse,
        use_mask,
    )
    torch.testing.assert_close(h, expected_h.to(dtype))
    for g, e in zip(grads, expected_grads):
        if e is None:
            assert g is None
        else:
            assert g.dtype == dtype
            eps = torch.finfo(dtype).eps
            torch.testing.assert_close(g.to(wide), e, rtol=eps, atol=eps * e.abs().max())


@pytest.mark.parametrize("use_gate,reverse,use_mask", COMBOS)
def test_host_build_gradcheck_fp64(cuda_kernels_on_host, use_gate, reverse, use_mask):
    assert_gradcheck("cuda", "cpu", use_gate, reverse, use_mask)


def test_guard_bytes_catch_a_write_past_the_end(host_library):
    """The guard check itself: a launch told there are more columns than the buffers hold
    writes past them and is caught."""
    steps, columns = 2, 3
    tensors = [torch.rand(steps, columns) for _ in range(2)]
    h0, h = torch.zeros(columns), torch.empty(steps, columns)
    pointers = [np.uint64(t.data_ptr()) for t in tensors] + [np.uint64(0),
                np.uint64(h0.data_ptr()), np.uint64(h.data_ptr())]
    sizes = [steps * columns * 4] * 3 + [columns * 4, steps * columns * 4]
    too_many_columns = (ctypes.c_longlong(steps), ctypes.c_longlong(columns + 8),
                        ctypes.c_int(0))
    with pytest.raises(AssertionError, match="wrote past a buffer"):
        run_guarded(host_library.forget_mult_forward_float, 1, THREADS_PER_BLOCK, pointers,
                    sizes, 4, too_many_columns, "forget_mult_forward<float>")
