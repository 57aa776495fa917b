"""Tests of NT-ASGD (fairseq_awd.optim.ntasgd) and the divide_at_epochs lr scheduler."""

import copy
import io

import pytest
import torch
from omegaconf import OmegaConf

import fairseq_awd.optim  # noqa: F401  (registers ntasgd and divide_at_epochs)
from fairseq_awd.optim.lr_scheduler.divide_at_epochs import DivideAtEpochsSchedule
from fairseq_awd.optim.ntasgd import NTASGD, FairseqNTASGD

LR, WD = 0.1, 1e-2


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))


def batches(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)) for _ in range(n)]


def train_step(model, opt, batch) -> None:
    x, y = batch
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_close(xs, ys, atol=1e-6):
    for x, y in zip(xs, ys, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)


def test_before_trigger_equals_sgd():
    model, ref = make_model(), make_model()
    opt = NTASGD(model.parameters(), lr=LR, weight_decay=WD)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=LR, weight_decay=WD)
    for batch in batches(20):
        train_step(model, opt, batch)
        train_step(ref, ref_opt, batch)
        assert_close(params(model), params(ref), atol=0)
    assert not opt.averaging
    assert all(not opt.state[p] for p in model.parameters())


def train_beside_torch_asgd(model, opt, steps: int) -> torch.optim.ASGD:
    """Train ``model`` with ``opt`` and a copy with ``torch.optim.ASGD(t0=0, lambd=0)`` on
    the same batches, checking after every step that iterates and averages agree."""
    ref = make_model()
    ref_opt = torch.optim.ASGD(ref.parameters(), lr=LR, t0=0, lambd=0.0, weight_decay=WD)
    for batch in batches(steps):
        train_step(model, opt, batch)
        train_step(ref, ref_opt, batch)
        assert_close(params(model), params(ref))
        assert_close(
            [opt.state[p]["ax"] for p in model.parameters()],
            [ref_opt.state[p]["ax"] for p in ref.parameters()],
        )
    return ref_opt


def test_after_trigger_matches_torch_asgd():
    model = make_model()
    opt = NTASGD(model.parameters(), lr=LR, weight_decay=WD)
    opt.start_averaging()
    train_beside_torch_asgd(model, opt, 20)
    # Average of iterates 2..20 (torch's ASGD convention with t0=0).
    iterates, check = [], make_model()
    check_opt = NTASGD(check.parameters(), lr=LR, weight_decay=WD)
    for batch in batches(20):
        train_step(check, check_opt, batch)
        iterates.append(params(check))
    mean = [torch.stack(ps[1:]).mean(0) for ps in zip(*iterates)]
    assert_close([opt.state[p]["ax"] for p in model.parameters()], mean)


def test_switch_mid_training_matches_sgd_then_asgd():
    model, ref = make_model(), make_model()
    opt = NTASGD(model.parameters(), lr=LR, weight_decay=WD, nonmono=1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=LR, weight_decay=WD)
    data = batches(12)
    for batch in data[:5]:
        train_step(model, opt, batch)
        train_step(ref, ref_opt, batch)
    fired = [opt.observe_validation_loss(v) for v in (3.0, 2.0, 2.5, 2.2)]
    assert fired == [False, False, False, True]
    ref_opt = torch.optim.ASGD(ref.parameters(), lr=LR, t0=0, lambd=0.0, weight_decay=WD)
    for batch in data[5:]:
        train_step(model, opt, batch)
        train_step(ref, ref_opt, batch)
    assert_close(params(model), params(ref))
    assert_close(
        [opt.state[p]["ax"] for p in model.parameters()],
        [ref_opt.state[p]["ax"] for p in ref.parameters()],
    )


def fire_index(losses, nonmono):
    opt = NTASGD(make_model().parameters(), lr=LR, nonmono=nonmono)
    fired = [i for i, v in enumerate(losses) if opt.observe_validation_loss(v)]
    assert len(fired) <= 1
    return (fired[0] if fired else None), opt


def test_trigger_fires_at_the_right_check():
    # nonmono=2. i=3: 3.5 > min([5]) is False (the 3 is among the last 2, not older).
    # i=4: 3.2 > min([5, 4]) is False. i=5: 3.4 > min([5, 4, 3]) = 3 is True.
    index, opt = fire_index([5, 4, 3, 3.5, 3.2, 3.4, 9.0], nonmono=2)
    assert index == 5
    assert opt.averaging
    assert opt.param_groups[0]["val_history"] == [5, 4, 3, 3.5, 3.2, 3.4]
    # Needs more than nonmono previous checks: 9.0 at i=2 cannot fire.
    assert fire_index([1.0, 2.0, 9.0], nonmono=2)[0] is None
    assert fire_index([1.0, 2.0, 9.0, 9.0], nonmono=2)[0] == 3
    # Equal to the older best is not worse.
    assert fire_index([5, 4, 3, 3.5, 3.2, 3.0], nonmono=2)[0] is None


def test_trigger_never_fires_when_monotone():
    index, opt = fire_index([10.0 - 0.5 * i for i in range(15)], nonmono=2)
    assert index is None and not opt.averaging
    assert fire_index([5.0] * 10, nonmono=5)[0] is None


def test_average_from_start_matches_torch_asgd_from_the_first_step():
    """The fine-tuning stage (finetune.py): ASGD(t0=0, lambd=0) from the first step."""
    model = make_model()
    opt = NTASGD(model.parameters(), lr=LR, weight_decay=WD, average_from_start=True)
    assert opt.averaging
    ref_opt = train_beside_torch_asgd(model, opt, 12)
    opt.use_average_weights()
    assert_close(params(model), [s["ax"] for s in ref_opt.state.values()])


def test_average_from_start_finishes_on_the_nonmonotone_condition():
    opt = NTASGD(make_model().parameters(), lr=LR, nonmono=2, average_from_start=True)
    losses = [5, 4, 3, 3.5, 3.2, 3.4, 9.0]
    fired = [opt.observe_validation_loss(v) for v in losses]
    # The same check as the trigger (i=5: 3.4 > min([5, 4, 3])), but it means "done", and
    # losses stay recorded after it, as finetune.py's best_val_loss list.
    assert fired == [False, False, False, False, False, True, True]
    assert opt.finished and opt.averaging
    assert opt.param_groups[0]["val_history"] == losses
    state = copy.deepcopy(opt.state_dict())
    again = NTASGD(make_model().parameters(), lr=LR, nonmono=2, average_from_start=True)
    again.load_state_dict(state)
    assert again.finished
    plain = NTASGD(make_model().parameters(), lr=LR, nonmono=2)
    assert not plain.finished


def averaged_setup(steps: int = 6):
    model = make_model()
    opt = NTASGD(model.parameters(), lr=LR, weight_decay=WD)
    data = batches(steps + 6)
    for batch in data[:3]:
        train_step(model, opt, batch)
    opt.start_averaging()
    for batch in data[3:steps]:
        train_step(model, opt, batch)
    return model, opt, data[steps:]


def test_swap_semantics():
    model, opt, _ = averaged_setup()
    raw = params(model)
    averages = [opt.state[p]["ax"].clone() for p in model.parameters()]
    assert any(not torch.equal(r, a) for r, a in zip(raw, averages))
    opt.use_raw_weights()
    assert_close(params(model), raw, atol=0)
    for _ in range(2):
        opt.use_average_weights()
        assert opt.swapped
        assert_close(params(model), averages, atol=0)
    for _ in range(2):
        opt.use_raw_weights()
        assert not opt.swapped
        assert_close(params(model), raw, atol=0)
    assert all("raw" not in opt.state[p] for p in model.parameters())

    ref = copy.deepcopy(model)
    ref_opt = NTASGD(ref.parameters(), lr=LR, weight_decay=WD)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    opt.use_average_weights()
    g = torch.Generator().manual_seed(7)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        p.grad = torch.randn(p.shape, generator=g)
        q.grad = p.grad.clone()
    opt.step()
    ref_opt.step()
    assert not opt.swapped
    assert_close(params(model), params(ref), atol=0)
    assert_close(
        [opt.state[p]["ax"] for p in model.parameters()],
        [ref_opt.state[p]["ax"] for p in ref.parameters()],
        atol=0,
    )


def test_swap_is_noop_before_trigger():
    model = make_model()
    opt = NTASGD(model.parameters(), lr=LR)
    train_step(model, opt, batches(1)[0])
    before = params(model)
    opt.use_average_weights()
    assert not opt.swapped
    assert_close(params(model), before, atol=0)


def test_state_dict_round_trip_while_swapped():
    model, opt, rest = averaged_setup()
    opt.use_average_weights()
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)

    fresh = make_model(seed=123)
    fresh.load_state_dict(ckpt["model"])
    fresh_opt = NTASGD(fresh.parameters(), lr=LR, weight_decay=WD)
    fresh_opt.load_state_dict(ckpt["optimizer"])
    assert fresh_opt.averaging and fresh_opt.swapped
    assert_close(params(fresh), params(model), atol=0)

    opt.use_raw_weights()
    fresh_opt.use_raw_weights()
    assert_close(params(fresh), params(model), atol=0)
    for batch in rest:
        train_step(model, opt, batch)
        train_step(fresh, fresh_opt, batch)
    assert_close(params(fresh), params(model), atol=0)
    assert_close(
        [fresh_opt.state[p]["ax"] for p in fresh.parameters()],
        [opt.state[p]["ax"] for p in model.parameters()],
        atol=0,
    )
    assert fresh_opt.param_groups[0]["val_history"] == opt.param_groups[0]["val_history"]


def test_fairseq_registration_builds_ntasgd():
    from fairseq.optim import OPTIMIZER_REGISTRY, build_optimizer

    assert OPTIMIZER_REGISTRY["ntasgd"] is FairseqNTASGD
    cfg = OmegaConf.create({"_name": "ntasgd", "nonmono": 3, "weight_decay": 1e-5, "lr": [0.5]})
    model = make_model()
    fs_opt = build_optimizer(cfg, list(model.parameters()))
    assert isinstance(fs_opt, FairseqNTASGD)
    assert isinstance(fs_opt.optimizer, NTASGD)
    group = fs_opt.optimizer.param_groups[0]
    assert (group["nonmono"], group["weight_decay"], group["lr"]) == (3, 1e-5, 0.5)
    assert fs_opt.optimizer_config == {"lr": 0.5, "weight_decay": 1e-5, "nonmono": 3,
                                       "average_from_start": False}
    fired = [fs_opt.observe_validation_loss(v) for v in (4.0, 3.0, 2.0, 1.0, 4.5)]
    assert fired == [False, False, False, False, True] and fs_opt.averaging

    default = build_optimizer(
        OmegaConf.create({"_name": "ntasgd", "lr": [30.0]}), list(model.parameters())
    )
    group = default.optimizer.param_groups[0]
    assert (group["nonmono"], group["weight_decay"], group["lr"]) == (5, 1.2e-6, 30.0)


def test_fairseq_command_line():
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.optim import build_optimizer
    from fairseq.optim.lr_scheduler import build_lr_scheduler

    parser = options.get_training_parser()
    argv = (
        "data --task awd_language_modeling --arch awd_lstm_lm --lr 30"
        " --optimizer ntasgd --nonmono 2 --weight-decay 1e-4"
        " --lr-scheduler divide_at_epochs --when 3,5 --when-factor 4"
    )
    args = options.parse_args_and_arch(parser, argv.split())
    cfg = convert_namespace_to_omegaconf(args)
    assert list(cfg.lr_scheduler.when) == [3, 5] and cfg.lr_scheduler.when_factor == 4.0
    fs_opt = build_optimizer(cfg.optimizer, list(make_model().parameters()))
    assert fs_opt.optimizer_config == {"lr": 30.0, "weight_decay": 1e-4, "nonmono": 2,
                                       "average_from_start": False}
    sched = build_lr_scheduler(cfg.lr_scheduler, fs_opt)
    assert isinstance(sched, DivideAtEpochsSchedule)
    assert [sched.step_begin_epoch(e) for e in range(1, 8)] == pytest.approx(
        [30.0, 30.0, 30.0, 7.5, 7.5, 1.875, 1.875]
    )


def test_divide_at_epochs_schedule():
    from fairseq.optim.lr_scheduler import LR_SCHEDULER_REGISTRY, build_lr_scheduler

    assert LR_SCHEDULER_REGISTRY["divide_at_epochs"] is DivideAtEpochsSchedule
    lr0 = 30.0
    fs_opt = FairseqNTASGD(
        OmegaConf.create({"nonmono": 5, "weight_decay": 0.0, "lr": [lr0]}),
        list(make_model().parameters()),
    )
    cfg = OmegaConf.create({"_name": "divide_at_epochs", "when": [2, 4], "lr": [lr0]})
    sched = build_lr_scheduler(cfg, fs_opt)
    assert sched.step_update(0) == lr0
    expected = {1: lr0, 2: lr0, 3: lr0 / 10, 4: lr0 / 10, 5: lr0 / 100, 9: lr0 / 100}
    for epoch, lr in expected.items():
        assert sched.step_begin_epoch(epoch) == pytest.approx(lr)
        assert sched.step_update(100 * epoch) == pytest.approx(lr)
        assert sched.step(epoch, val_loss=1.0) == pytest.approx(lr)
        assert fs_opt.get_lr() == pytest.approx(lr)

    resumed = build_lr_scheduler(cfg, fs_opt)
    resumed.load_state_dict(sched.state_dict())
    assert resumed.step_begin_epoch(3) == pytest.approx(lr0 / 10)

    no_when = build_lr_scheduler(
        OmegaConf.create({"_name": "divide_at_epochs", "lr": [lr0]}), fs_opt
    )
    assert no_when.step_begin_epoch(50) == lr0
