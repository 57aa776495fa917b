"""Tests of dynamic evaluation (fairseq_awd.optim.dynamic_eval), Krause et al. 2017."""

import pytest
import torch
import torch.nn.functional as F

from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.optim.dynamic_eval import (
    KRAUSE_PTB_DECAY,
    KRAUSE_SEGMENT_LENGTH,
    DynamicEvaluation,
)

F64 = torch.float64


def param(*values) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(values, dtype=F64))


def accumulate(opt, params, grads_per_batch) -> None:
    for grads in grads_per_batch:
        for p, g in zip(params, grads, strict=True):
            p.grad = None if g is None else torch.tensor(g, dtype=F64)
        opt.accumulate_gradient_statistics()
    opt.finish_gradient_statistics()


def assert_exact(x, expected) -> None:
    torch.testing.assert_close(x, torch.as_tensor(expected, dtype=F64), rtol=1e-15, atol=1e-15)


def test_statistics_are_rms_of_gradients_over_batches():
    a, b = param([0.0, 0.0], [0.0, 0.0]), param(0.0, 0.0, 0.0)
    opt = DynamicEvaluation([a, b], lr=0.1)
    assert not opt.has_statistics
    # Per element, sum over the 3 batches of g**2 is 3 * MS**2: (1,5,7) -> 5, (1,1,5) -> 3 ...
    accumulate(
        opt,
        [a, b],
        [
            ([[1.0, 1.0], [1.0, 0.0]], [2.0, 1.0, 3.0]),
            ([[1.0, 1.0], [5.0, 0.0]], [-2.0, -1.0, 3.0]),
            ([[1.0, -5.0], [7.0, 0.0]], [2.0, 1.0, -3.0]),
        ],
    )
    assert opt.has_statistics
    assert_exact(opt.state[a]["ms"], [[1.0, 3.0], [5.0, 0.0]])
    assert_exact(opt.state[b]["ms"], [2.0, 1.0, 3.0])
    gsum = ((1 + 3 + 5 + 0) / 4 + (2 + 1 + 3) / 3) / 2
    assert gsum == 2.125
    assert_exact(opt.state[a]["decay_rate"], [[1 / gsum, 3 / gsum], [5 / gsum, 0.0]])
    assert_exact(opt.state[b]["decay_rate"], [2 / gsum, 1 / gsum, 3 / gsum])


def test_batches_are_counted_for_all_parameters_together():
    a, b = param(0.0), param(0.0)
    opt = DynamicEvaluation([a, b], lr=0.1)
    accumulate(opt, [a, b], [([2.0], [1.0]), (None, [1.0]), (None, [1.0]), ([2.0], [1.0])])
    assert_exact(opt.state[a]["ms"], [2.0**0.5])  # sqrt((4 + 4) / 4)
    assert_exact(opt.state[b]["ms"], [1.0])


def test_rms_step_matches_hand_computation_with_clipped_decay_rate():
    p = param(1.0, 2.0, 3.0)
    opt = DynamicEvaluation([p], lr=0.1, decay=0.8, epsilon=1.0)
    accumulate(opt, [p], [([1.0, -1.0, 4.0],)])
    # MS = (1, 1, 4), gsum = 2, decay_rate = (0.5, 0.5, 2), and 2 > 1 / decay = 1.25.
    assert_exact(opt.state[p]["decay_rate"], [0.5, 0.5, 2.0])
    with torch.no_grad():
        p.copy_(torch.tensor([2.0, 0.0, 5.0]))  # theta0 - theta = (-1, 2, -2)
    p.grad = torch.tensor([2.0, -1.0, 4.0], dtype=F64)
    opt.step()
    # decay * min(rate, 1.25) = (0.4, 0.4, 1.0); lr * grad / (MS + eps) = (0.1, -0.05, 0.08).
    expected = [2.0 - 0.4 - 0.1, 0.0 + 0.8 + 0.05, 5.0 - 2.0 - 0.08]
    torch.testing.assert_close(p.detach(), torch.tensor(expected, dtype=F64), rtol=0, atol=1e-14)


def test_zero_lr_and_zero_decay_leave_parameters_unchanged():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = DynamicEvaluation(model.parameters(), lr=0.0, decay=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(4):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.accumulate_gradient_statistics()
        if step == 0:
            opt.finish_gradient_statistics()
        opt.step()
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)


def test_sgd_variant_without_decay_is_plain_sgd():
    def run(make_opt):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3).double()
        opt = make_opt(model.parameters())
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            x, y = torch.randn(6, 4, generator=g, dtype=F64), torch.randint(3, (6,), generator=g)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return [p.detach() for p in model.parameters()]

    ours = run(lambda ps: DynamicEvaluation(ps, lr=0.3, rms=False))
    sgd = run(lambda ps: torch.optim.SGD(ps, lr=0.3))
    for x, y in zip(ours, sgd, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


def test_sgd_variant_decays_towards_theta0():
    p = param(1.0, -1.0)
    opt = DynamicEvaluation([p], lr=0.5, decay=0.25, rms=False)
    with torch.no_grad():
        p.copy_(torch.tensor([3.0, 1.0]))
    p.grad = torch.tensor([1.0, 2.0], dtype=F64)
    opt.step()
    assert_exact(p.detach(), [3.0 - 0.5 - 0.5, 1.0 - 0.5 - 1.0])


def test_parameter_without_grad_only_decays():
    a, b = param(1.0, 2.0), param(0.0)
    opt = DynamicEvaluation([a, b], lr=0.1, decay=0.5)
    accumulate(opt, [a, b], [([1.0, 3.0], [2.0])])
    # gsum = (2 + 2) / 2 = 2: decay_rate of a = (0.5, 1.5), clipped at 1 / decay = 2 (no clip).
    with torch.no_grad():
        a.copy_(torch.tensor([3.0, 0.0]))
    a.grad, b.grad = None, torch.tensor([1.0], dtype=F64)
    opt.step()
    assert_exact(a.detach(), [3.0 + 0.5 * 0.5 * (1.0 - 3.0), 0.0 + 0.5 * 1.5 * (2.0 - 0.0)])


def test_reset_restores_theta0_and_keeps_statistics():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    theta0 = [p.detach().clone() for p in model.parameters()]
    opt = DynamicEvaluation(model.parameters(), lr=0.1, decay=0.01)
    model(torch.randn(4, 3)).sum().backward()
    opt.accumulate_gradient_statistics()
    opt.finish_gradient_statistics()
    ms = [opt.state[p]["ms"].clone() for p in model.parameters()]
    for _ in range(3):
        opt.step()
    assert not torch.equal(next(model.parameters()), theta0[0])
    opt.reset()
    assert opt.has_statistics
    for p, t, m in zip(model.parameters(), theta0, ms, strict=True):
        assert torch.equal(p, t)
        assert torch.equal(opt.state[p]["ms"], m)
    opt.set_hyperparameters(lr=0.2, decay=0.0)
    assert all(g["lr"] == 0.2 and g["decay"] == 0.0 for g in opt.param_groups)


def test_state_dict_round_trip_continues_identically():
    def make():
        torch.manual_seed(0)
        return torch.nn.Linear(3, 2).double()

    model = make()
    opt = DynamicEvaluation(model.parameters(), lr=0.1, decay=0.01)
    model(torch.ones(2, 3, dtype=F64)).sum().backward()
    opt.accumulate_gradient_statistics()
    opt.finish_gradient_statistics()
    opt.step()
    copy = make()
    copy.load_state_dict(model.state_dict())
    copy_opt = DynamicEvaluation(copy.parameters(), lr=1.0)
    copy_opt.load_state_dict(opt.state_dict())
    for m, o in ((model, opt), (copy, copy_opt)):
        o.zero_grad()
        m(torch.full((2, 3), 2.0, dtype=F64)).pow(2).sum().backward()
        o.step()
    for p, q in zip(model.parameters(), copy.parameters(), strict=True):
        assert torch.equal(p, q)
    opt.reset(), copy_opt.reset()
    for p, q, t in zip(model.parameters(), copy.parameters(), make().parameters(), strict=True):
        assert torch.equal(p, t) and torch.equal(q, t)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1), "--dynamic-lr must be non-negative, got -1"),
        (dict(lr=float("nan")), "--dynamic-lr must be non-negative, got nan"),
        (dict(lr=0.1, decay=-0.5), "--dynamic-decay must be non-negative, got -0.5"),
        (dict(lr=0.1, epsilon=0.0), "--dynamic-epsilon must be positive, got 0.0"),
    ],
)
def test_bad_options_name_the_option(kwargs, message):
    with pytest.raises(FairseqAWDError, match=f"^{message}$"):
        DynamicEvaluation([param(0.0)], **kwargs)


def test_misuse_is_reported():
    p = param(1.0)
    opt = DynamicEvaluation([p], lr=0.1)
    with pytest.raises(FairseqAWDError, match="--dynamic-decay must be non-negative, got -2"):
        opt.set_hyperparameters(lr=0.1, decay=-2)
    with pytest.raises(FairseqAWDError, match="no gradient statistics to finish"):
        opt.finish_gradient_statistics()
    p.grad = torch.ones_like(p)
    with pytest.raises(FairseqAWDError, match="collect gradient statistics on training data"):
        opt.step()
    assert torch.equal(p.detach(), torch.tensor([1.0], dtype=F64))
    p.grad = torch.zeros_like(p)
    opt.accumulate_gradient_statistics()
    with pytest.raises(FairseqAWDError, match="all zero"):
        opt.finish_gradient_statistics()


class TinyLM(torch.nn.Module):
    def __init__(self, vocab: int = 10, dim: int = 16) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.lstm = torch.nn.LSTM(dim, dim)
        self.out = torch.nn.Linear(dim, vocab)

    def forward(self, tokens, hidden=None):
        output, hidden = self.lstm(self.embed(tokens), hidden)
        return self.out(output), hidden


def segments(text: torch.Tensor, length: int = KRAUSE_SEGMENT_LENGTH):
    """(input, target) pairs of shape (time, batch) over ``text`` of shape (time, batch)."""
    for i in range(0, text.size(0) - 1, length):
        target = text[i + 1 : i + 1 + length]
        yield text[i : i + target.size(0)], target


def dynamic_nll(lr: float) -> float:
    torch.manual_seed(0)
    model = TinyLM().eval()
    pattern = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 8])
    train = torch.stack([pattern.roll(k).repeat(6) for k in range(4)], dim=1)
    test = pattern.roll(7).repeat(12)[:, None]
    opt = DynamicEvaluation(model.parameters(), lr=lr, decay=KRAUSE_PTB_DECAY)
    hidden = None
    for x, y in segments(train):
        opt.zero_grad()
        logits, hidden = model(x, hidden)
        hidden = tuple(h.detach() for h in hidden)
        F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
        opt.accumulate_gradient_statistics()
    opt.finish_gradient_statistics()
    total, hidden = 0.0, None
    for x, y in segments(test):
        opt.zero_grad()
        logits, hidden = model(x, hidden)
        hidden = tuple(h.detach() for h in hidden)
        nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
        (nll / y.numel()).backward()
        opt.step()
        total += nll.item()
    return total


@pytest.mark.e2e
def test_dynamic_evaluation_lowers_nll_of_repetitive_text():
    static, dynamic = dynamic_nll(lr=0.0), dynamic_nll(lr=1e-2)
    assert dynamic < 0.7 * static, (dynamic, static)
