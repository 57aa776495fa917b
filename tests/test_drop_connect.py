"""drop_connect: the AWD models' weight drop, its mask from the C++ counter-based generator
on the CPU (fairseq_awd/csrc/drop_connect_cpu.cpp): values, mask statistics, seeding,
independence of the thread count, and the backward pass's redrawn mask."""

import math

import pytest
import torch

from fairseq_awd.modules import drop_connect
from fairseq_awd.modules.drop_connect import _cpu_extension

needs_extension = pytest.mark.skipif(_cpu_extension() is None,
                                     reason="the C++ DropConnect extension is not built")


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_kept_weights_are_scaled_and_dropped_ones_zero(dtype):
    torch.manual_seed(0)
    weight = (torch.rand(300, 70, dtype=torch.float64) + 0.5).to(dtype)  # no zero weights
    p = 0.3
    out = drop_connect(weight, p)
    assert out.dtype == dtype
    kept = out != 0
    wide = torch.float64 if dtype == torch.float64 else torch.float32  # the kernel's arithmetic
    expected = (weight[kept].to(wide) * torch.tensor(1 / (1 - p), dtype=wide)).to(dtype)
    assert torch.equal(out[kept], expected)


@needs_extension
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_frequency_and_neighbours_are_independent(p):
    """The fraction kept is 1 - p within 5 standard deviations; neighbouring positions
    (and the two halves of one 64-bit number, were they used) are uncorrelated."""
    torch.manual_seed(1)
    n = 1_000_000
    kept = drop_connect(torch.ones(n), p) != 0
    share = kept.double().mean().item()
    assert abs(share - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    a, b = kept[:-1].double(), kept[1:].double()
    correlation = ((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())
    assert abs(correlation.item()) < 5 / math.sqrt(n)


@needs_extension
def test_seeded_by_torch_and_fresh_at_every_call():
    weight = torch.ones(200, 50)
    torch.manual_seed(3)
    first, second = drop_connect(weight, 0.5), drop_connect(weight, 0.5)
    torch.manual_seed(3)
    assert torch.equal(drop_connect(weight, 0.5), first)
    assert not torch.equal(first, second)


@needs_extension
def test_mask_does_not_depend_on_the_thread_count():
    weight = torch.ones(1000, 300)  # several parallel chunks
    threads = torch.get_num_threads()
    try:
        masks = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            torch.manual_seed(4)
            masks.append(drop_connect(weight, 0.4))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_is_the_same_mask_scaled(dtype):
    """d(W * M / (1 - p))/dW = M / (1 - p): the backward redraws the forward's mask."""
    torch.manual_seed(5)
    weight = torch.randn(120, 40).to(dtype).requires_grad_()
    out = drop_connect(weight, 0.25)
    upstream = torch.randn(120, 40).to(dtype)
    torch.manual_seed(99)  # the global generator moving on does not change the redrawn mask
    out.backward(upstream)
    scaled_mask = (out.detach() != 0).float() * torch.tensor(1 / 0.75, dtype=torch.float32)
    assert torch.equal(weight.grad, (upstream.float() * scaled_mask).to(dtype))


def test_identity_in_eval_or_without_dropout_and_bad_p_refused():
    weight = torch.randn(4, 5)
    assert drop_connect(weight, 0.5, training=False) is weight
    assert drop_connect(weight, 0.0) is weight
    for p in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"weight drop probability must be in \[0, 1\)"):
            drop_connect(weight, p)


def test_without_the_extension_it_is_f_dropout(monkeypatch):
    drop_connect_module = __import__("fairseq_awd.modules.drop_connect", fromlist=["_"])
    monkeypatch.setattr(drop_connect_module, "_cpu_extension", lambda: None)
    weight = torch.ones(50, 60)
    torch.manual_seed(6)
    out = drop_connect(weight, 0.5)
    torch.manual_seed(6)
    assert torch.equal(out, torch.nn.functional.dropout(weight, 0.5, training=True))
