"""Tests of the one-step learning-rate scaling (fairseq_awd.optim.step_lr_scale)."""

import torch
from omegaconf import OmegaConf

from fairseq_awd.optim.ntasgd import FairseqNTASGD, NTASGDConfig
from fairseq_awd.optim.step_lr_scale import scaled_learning_rates

LR = 0.1
GRAD = torch.tensor([0.3, -0.4, 1.25], dtype=torch.float64)


def setup(lr=LR):
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64))
    return param, torch.optim.SGD([param], lr=lr)


def step(param, opt):
    """One SGD step with the fixed gradient; returns how far the parameter moved."""
    before = param.detach().clone()
    param.grad = GRAD.clone()
    opt.step()
    return before - param.detach()


def close(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_scaled_step_then_restore():
    param, opt = setup()
    with scaled_learning_rates(opt, 0.5):
        assert opt.param_groups[0]["lr"] == LR * 0.5
        close(step(param, opt), LR * 0.5 * GRAD)
    assert opt.param_groups[0]["lr"] == LR
    # the next, unscaled step uses the plain lr
    close(step(param, opt), LR * GRAD)
    assert opt.param_groups[0]["lr"] == LR


def test_scale_is_restored_when_the_step_fails():
    param, opt = setup()
    try:
        with scaled_learning_rates(opt, 0.25):
            raise OverflowError("as fairseq's loss scaler does")
    except OverflowError:
        pass
    assert opt.param_groups[0]["lr"] == LR


def test_scheduler_lr_change_between_steps_is_new_base():
    param, opt = setup()
    with scaled_learning_rates(opt, 1.5):
        step(param, opt)
    opt.param_groups[0]["lr"] = 0.02  # what an lr scheduler does after the update
    with scaled_learning_rates(opt, 2.0):
        close(step(param, opt), 0.02 * 2.0 * GRAD)
    assert opt.param_groups[0]["lr"] == 0.02
    with scaled_learning_rates(opt, 0.5):
        close(step(param, opt), 0.02 * 0.5 * GRAD)
    assert opt.param_groups[0]["lr"] == 0.02


def test_every_param_group_scaled_by_its_own_lr():
    a = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.4}], lr=0.1)
    with scaled_learning_rates(opt, 0.25):
        a.grad, b.grad = GRAD.clone(), GRAD.clone()
        opt.step()
    close(a.detach(), -0.1 * 0.25 * GRAD)
    close(b.detach(), -0.4 * 0.25 * GRAD)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.4]


def test_fairseq_optimizer_is_scaled_through_its_param_groups():
    param, _ = setup()
    opt = FairseqNTASGD(OmegaConf.structured(NTASGDConfig(lr=[LR], weight_decay=0.0)), [param])
    with scaled_learning_rates(opt, 0.5):
        close(step(param, opt), LR * 0.5 * GRAD)
    assert opt.get_lr() == LR
