"""softmax_nll: the target's NLL under a full softmax, block by block, against the fp64
definition (values and gradients), for every dtype, with ignored rows and ragged blocks."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from fairseq_awd.modules import softmax_nll

softmax_nll_module = importlib.import_module("fairseq_awd.modules.softmax_nll")
N, V, PAD = 37, 53, 1


def example(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, V, generator=g) * 4).to(dtype).requires_grad_()
    target = torch.randint(0, V, (N,), generator=g)
    target[[0, 5, 36]] = PAD
    scale = torch.rand(N, generator=g)
    return logits, target, scale


def definition(logits, target, scale):
    """fp64 ``F.cross_entropy`` on the same (rounded) logits, and its gradient."""
    wide = logits.detach().double().requires_grad_()
    nll = F.cross_entropy(wide, target, ignore_index=PAD, reduction="none")
    nll.backward(scale.double())
    return nll.detach(), wide.grad


@pytest.fixture(params=[None, 3 * V * 4 + 8])
def block_bytes(request, monkeypatch):
    """One block, or blocks of 3 rows with a ragged last one (37 = 12 * 3 + 1)."""
    if request.param:
        monkeypatch.setattr(softmax_nll_module, "_BLOCK_BYTES", request.param)
    return request.param


def test_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    nll = softmax_nll(logits, torch.tensor([3, 0]))
    torch.testing.assert_close(nll, torch.tensor([torch.log(torch.tensor(4.0)).item(),
                                                  -2 + torch.log(torch.exp(torch.tensor(2.0))
                                                                 + 3).item()]))


@pytest.mark.parametrize("dtype,rtol,grad_tol", [
    (torch.float64, 1e-12, 1e-12), (torch.float32, 1e-5, 1e-6),
    (torch.bfloat16, 1e-5, torch.finfo(torch.bfloat16).eps),
    (torch.float16, 1e-5, torch.finfo(torch.float16).eps)])
def test_matches_the_fp64_definition(block_bytes, dtype, rtol, grad_tol):
    """Accumulated in fp32 from the half logits themselves: the NLL is the fp64 one on the
    same rounded logits to fp32 precision, not to half precision; the gradient is the fp32
    one rounded once to the logits' dtype."""
    logits, target, scale = example(dtype)
    nll = softmax_nll(logits, target, ignore_index=PAD)
    assert nll.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    expected_nll, expected_grad = definition(logits, target, scale)
    torch.testing.assert_close(nll.double(), expected_nll, rtol=rtol, atol=rtol)
    nll.backward(scale.to(nll.dtype))
    assert logits.grad.dtype == dtype
    torch.testing.assert_close(logits.grad.double(), expected_grad, rtol=grad_tol,
                               atol=grad_tol)


def test_ignored_rows_are_zero_and_get_no_gradient():
    logits, target, _ = example(torch.float32)
    nll = softmax_nll(logits, target, ignore_index=PAD)
    ignored = target.eq(PAD)
    assert torch.all(nll[ignored] == 0) and torch.all(nll[~ignored] > 0)
    nll.sum().backward()
    assert torch.all(logits.grad[ignored] == 0)
    # every other row's gradient is softmax - onehot: it sums to zero
    torch.testing.assert_close(logits.grad[~ignored].sum(-1), torch.zeros(int((~ignored).sum())),
                               atol=1e-6, rtol=0)


def test_gradcheck_fp64(block_bytes):
    logits, target, _ = example(torch.float64)
    assert torch.autograd.gradcheck(lambda z: softmax_nll(z, target, ignore_index=PAD),
                                    (logits,))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"logits \(N, V\) and target \(N,\)"):
        softmax_nll(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"logits \(N, V\) and target \(N,\)"):
        softmax_nll(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
