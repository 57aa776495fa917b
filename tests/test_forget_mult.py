"""ForgetMult: the reference against hand computation, the C++ and CUDA kernels against
the reference (values and gradients), and the mask / initial-state / direction semantics."""

import importlib
import itertools

import pytest
import torch
from cuda_marks import needs_cuda

from fairseq_awd.modules.forget_mult import (
    cpu_extension_available,
    forget_mult,
    forget_mult_reference,
)

T, B, H = 6, 3, 5
COMBOS = list(itertools.product([False, True], [False, True], [False, True]))  # gate, reverse, mask


def random_inputs(seed=0, dtype=torch.float64, device="cpu", steps=T, batch=B, hidden=H):
    g = torch.Generator().manual_seed(seed)

    def make(*shape, positive=False):
        t = torch.rand(*shape, generator=g) if positive else torch.randn(*shape, generator=g)
        return t.to(dtype=dtype, device=device).requires_grad_()

    f = make(steps, batch, hidden, positive=True)
    x = make(steps, batch, hidden)
    gate = make(steps, batch, hidden, positive=True)
    h0 = make(batch, hidden)
    mask = (torch.rand(steps, batch, generator=g) > 0.3).to(device)
    return f, x, gate, h0, mask


def test_reference_by_hand():
    f = torch.tensor([0.5, 0.25, 1.0]).view(3, 1, 1)
    x = torch.tensor([2.0, 4.0, -1.0]).view(3, 1, 1)
    h0 = torch.tensor([[8.0]])
    # h1 = .5*2 + .5*8 = 5; h2 = .25*4 + .75*5 = 4.75; h3 = 1*(-1) + 0 = -1
    assert forget_mult_reference(f, x, h0).flatten().tolist() == [5.0, 4.75, -1.0]
    # right to left from h0: h3 = -1, h2 = .25*4 + .75*(-1) = .25, h1 = .5*2 + .5*.25 = 1.125
    assert forget_mult_reference(f, x, h0, reverse=True).flatten().tolist() == [1.125, 0.25, -1.0]
    gate = torch.tensor([1.0, 0.0, 0.5]).view(3, 1, 1)
    # h1 = 1*2 + .5*8 = 6; h2 = 0 + .75*6 = 4.5; h3 = .5*(-1) + 0*4.5 = -.5
    assert forget_mult_reference(f, x, h0, input_gate=gate).flatten().tolist() == [6.0, 4.5, -0.5]
    mask = torch.tensor([True, False, True]).view(3, 1)
    # the masked step keeps h1 = 5; h3 = -1
    assert forget_mult_reference(f, x, h0, mask=mask).flatten().tolist() == [5.0, 5.0, -1.0]


def test_cpu_extension_is_built():
    # `make install` builds it; without it "auto" silently falls back to the slow loop.
    assert cpu_extension_available()


def call(backend, f, x, gate, h0, mask, use_gate, reverse, use_mask):
    return forget_mult(
        f, x, h0, input_gate=gate if use_gate else None, reverse=reverse,
        mask=mask if use_mask else None, backend=backend,
    )


def assert_gradcheck(backend, device, use_gate, reverse, use_mask):
    f, x, gate, h0, mask = random_inputs(device=device)
    inputs = (f, x, gate, h0) if use_gate else (f, x, h0)

    def fn(*args):
        if use_gate:
            f_, x_, gate_, h0_ = args
        else:
            (f_, x_, h0_), gate_ = args, None
        return call(backend, f_, x_, gate_, h0_, mask, use_gate, reverse, use_mask)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("use_gate,reverse,use_mask", COMBOS)
def test_gradcheck_cpu(backend, use_gate, reverse, use_mask):
    assert_gradcheck(backend, "cpu", use_gate, reverse, use_mask)


def assert_matches_reference(backend, dtype, device, use_gate, reverse, use_mask, atol):
    f, x, gate, h0, mask = random_inputs(dtype=torch.float32, device=device, steps=40, batch=4,
                                         hidden=33)
    expected = call("reference", f, x, gate, h0, mask, use_gate, reverse, use_mask)
    grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (f, x, gate, h0), grad, allow_unused=True)
    cast = [t.detach().to(dtype).requires_grad_() for t in (f, x, gate, h0)]
    got = call(backend, *cast, mask, use_gate, reverse, use_mask)
    assert got.dtype == dtype
    got_grads = torch.autograd.grad(got, cast, grad.to(dtype), allow_unused=True)
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=atol)
    for got_g, exp_g in zip(got_grads, expected_grads):
        if exp_g is None:
            assert got_g is None
        else:  # gradients sum over up to 40 steps: relative tolerance as well
            torch.testing.assert_close(got_g.float(), exp_g, rtol=atol, atol=atol)


@pytest.mark.parametrize("use_gate,reverse,use_mask", COMBOS)
def test_cpu_kernel_matches_reference_fp32(use_gate, reverse, use_mask):
    assert_matches_reference("cpu", torch.float32, "cpu", use_gate, reverse, use_mask, 1e-6)


def test_auto_picks_cpu_kernel_for_float_cpu_tensors(monkeypatch):
    # the package exports the function under the module's name: fetch the module itself
    fm = importlib.import_module("fairseq_awd.modules.forget_mult")
    used = []
    original = fm._kernels

    def spy(backend, x):
        used.append(backend)
        return original(backend, x)

    monkeypatch.setattr(fm, "_kernels", spy)
    f, x, _, h0, _ = random_inputs(dtype=torch.float32)
    forget_mult(f, x, h0)
    assert used == ["cpu"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("use_gate,reverse,use_mask", COMBOS)
def test_half_cpu_kernel_rounds_the_fp32_result_once(monkeypatch, dtype, use_gate, reverse,
                                                     use_mask):
    """--bf16 --cpu: the C++ kernel reads and writes fp16/bf16 (no fp32 copies reach it) and
    keeps its state in fp32, so each output is the fp32 kernel's on the same 16-bit inputs,
    rounded once. The backward reads the states back from the stored (rounded) output, so
    the gradients are fp32's to within the rounding of those states: ``eps`` of the
    largest gradient."""
    if not cpu_extension_available():
        pytest.skip("the C++ extension is not built")
    fm = importlib.import_module("fairseq_awd.modules.forget_mult")
    seen = []
    original = fm._kernels
    monkeypatch.setattr(fm, "_kernels", lambda backend, x: seen.append(x.dtype)
                        or original(backend, x))
    *tensors, mask = random_inputs(dtype=torch.float32, steps=40, batch=4, hidden=300)
    half = [t.detach().to(dtype).requires_grad_() for t in tensors]
    full = [t.detach().float().requires_grad_() for t in half]
    out_half = call("auto", *half[:3], half[3], mask, use_gate, reverse, use_mask)
    out_full = call("cpu", *full[:3], full[3], mask, use_gate, reverse, use_mask)
    assert seen == [dtype, torch.float32]
    assert out_half.dtype == dtype
    assert torch.equal(out_half, out_full.to(dtype))
    grad = torch.randn(out_full.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    out_half.backward(grad)
    out_full.backward(grad.float())
    eps = torch.finfo(dtype).eps
    for h, g in zip(half, full):
        if g.grad is None:  # the gate when it is not used
            assert h.grad is None
        else:
            assert h.grad.dtype == dtype
            torch.testing.assert_close(h.grad.float(), g.grad, rtol=eps,
                                       atol=eps * g.grad.abs().max().item())


def test_mask_carries_state_and_blocks_gradient():
    f, x, _, h0, _ = random_inputs(dtype=torch.float32)
    mask = torch.ones(T, B, dtype=torch.bool)
    mask[3:, 0] = False  # sequence 0 is right-padded after three tokens
    mask[0, 1] = False  # sequence 1 starts with a pad
    h = forget_mult(f, x, h0, mask=mask)
    torch.testing.assert_close(h[3:, 0], h[2, 0].expand(T - 3, H))
    torch.testing.assert_close(h[0, 1], h0[1])
    # the unpadded part of sequence 0 alone gives the same states
    alone = forget_mult(f[:3, :1], x[:3, :1], h0[:1])
    torch.testing.assert_close(h[:3, :1], alone)
    h.sum().backward()
    assert torch.all(f.grad[3:, 0] == 0) and torch.all(x.grad[3:, 0] == 0)
    assert torch.all(f.grad[0, 1] == 0) and torch.all(x.grad[0, 1] == 0)


@pytest.mark.parametrize("reverse", [False, True])
def test_initial_state_continues_a_split_sequence(reverse):
    f, x, _, h0, _ = random_inputs(dtype=torch.float32)
    full = forget_mult(f, x, h0, reverse=reverse)
    k = 2
    if reverse:  # right to left: the later part runs first and hands over its last state
        later = forget_mult(f[k:], x[k:], h0, reverse=True)
        earlier = forget_mult(f[:k], x[:k], later[0], reverse=True)
        torch.testing.assert_close(torch.cat([earlier, later]), full)
    else:
        earlier = forget_mult(f[:k], x[:k], h0)
        later = forget_mult(f[k:], x[k:], earlier[-1])
        torch.testing.assert_close(torch.cat([earlier, later]), full)
    zero_start = forget_mult(f, x)
    torch.testing.assert_close(zero_start, forget_mult(f, x, torch.zeros(B, H)))


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: {**a, "f": a["f"][:, :2]}, "forget gate shape"),
        (lambda a: {**a, "h0": a["h0"][:2]}, "initial state shape"),
        (lambda a: {**a, "mask": a["mask"][:, :2]}, "mask shape"),
        (lambda a: {**a, "mask": a["mask"].float()}, "bool"),
        (lambda a: {**a, "input_gate": a["input_gate"][:-1]}, "input gate shape"),
        (lambda a: {**a, "backend": "fortran"}, "unknown ForgetMult backend"),
    ],
)
def test_bad_shapes_raise(change, message):
    f, x, gate, h0, mask = random_inputs(dtype=torch.float32)
    args = change({"f": f, "x": x, "h0": h0, "input_gate": gate, "mask": mask})
    with pytest.raises(ValueError, match=message):
        forget_mult(args.pop("f"), args.pop("x"), args.pop("h0"), **args)


# ---------------------------------------------------------------- CUDA (skipped without a GPU)


@needs_cuda
@pytest.mark.parametrize("use_gate,reverse,use_mask", COMBOS)
def test_gradcheck_cuda(use_gate, reverse, use_mask):
    assert_gradcheck("cuda", "cuda", use_gate, reverse, use_mask)


@needs_cuda
@pytest.mark.parametrize(
    "dtype,atol", [(torch.float32, 1e-6), (torch.float16, 2e-2), (torch.bfloat16, 1e-1)]
)
@pytest.mark.parametrize("use_gate,reverse,use_mask", COMBOS)
def test_cuda_kernel_matches_reference(dtype, atol, use_gate, reverse, use_mask):
    assert_matches_reference("cuda", dtype, "cuda", use_gate, reverse, use_mask, atol)


@needs_cuda
def test_cuda_kernel_runs_on_the_current_stream():
    f, x, _, h0, _ = random_inputs(dtype=torch.float32, device="cuda", steps=500, batch=8,
                                   hidden=2500)
    expected = forget_mult(f, x, h0, backend="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = forget_mult(f, x, h0, backend="cuda")
        got_sum = got.sum()  # queued behind the kernel on the same stream
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(got_sum, expected.sum())
    torch.testing.assert_close(got, expected)
