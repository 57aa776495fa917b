"""The awd_language_modeling task: per-step learning-rate scaling and NT-ASGD hooks."""

from types import SimpleNamespace

import torch
from omegaconf import OmegaConf
from test_model_and_criterion import DICT, make_model, make_tokens

from fairseq_awd.criterions.awd_cross_entropy import AWDCrossEntropyCriterion
from fairseq_awd.optim.ntasgd import FairseqNTASGD, NTASGDConfig
from fairseq_awd.tasks.awd_language_modeling import (
    AWDLanguageModelingConfig,
    AWDLanguageModelingTask,
)

BPTT = 10


def make_task(fixed_bptt=False):
    cfg = OmegaConf.structured(AWDLanguageModelingConfig(
        data="unused", bptt=BPTT, fixed_bptt=fixed_bptt, batch_size=3, train_subset="train",
        seed=1,
    ))
    return AWDLanguageModelingTask(cfg, DICT)


def sample_of_length(length):
    tokens = make_tokens(batch=3, steps=length + 1)
    net_input = {"src_tokens": tokens[:, :-1], "src_lengths": torch.full((3,), length),
                 "stream_id": "train", "stream_start": True}
    return {"net_input": net_input, "target": tokens[:, 1:], "ntokens": 3 * length,
            "nsentences": 3}


def step(task, length, lr=2.0):
    """One train_step + optimizer step; returns (update / grad ratio, lr after the step)."""
    model = make_model(dropout=0, dropouth=0, dropouti=0, dropoute=0, wdrop=0)
    criterion = AWDCrossEntropyCriterion(SimpleNamespace(target_dictionary=DICT), 0.0, 0.0)
    optimizer = FairseqNTASGD(OmegaConf.structured(NTASGDConfig(lr=[lr], weight_decay=0.0)),
                              list(model.parameters()))
    before = model.decoder.output_bias.detach().clone()
    task.train_step(sample_of_length(length), model, criterion, optimizer, update_num=0)
    grad = model.decoder.output_bias.grad.clone()
    task.optimizer_step(optimizer, model, update_num=0)
    moved = before - model.decoder.output_bias.detach()
    mask = grad.abs() > 1e-8
    return (moved[mask] / grad[mask]), optimizer.get_lr()


def test_learning_rate_scaled_by_window_length_for_one_step():
    ratio, lr_after = step(make_task(), length=5)
    torch.testing.assert_close(ratio, torch.full_like(ratio, 2.0 * 5 / BPTT))
    assert lr_after == 2.0


def test_fixed_bptt_does_not_scale():
    ratio, _ = step(make_task(fixed_bptt=True), length=5)
    torch.testing.assert_close(ratio, torch.full_like(ratio, 2.0))


def test_validation_hooks_drive_ntasgd():
    task = make_task()
    model = make_model()
    optimizer = FairseqNTASGD(OmegaConf.structured(NTASGDConfig(lr=[1.0], nonmono=1)),
                              list(model.parameters()))
    task.optimizer_step(optimizer, model, update_num=0)  # no gradients: no update
    for loss, switched in [(5.0, False), (4.0, False), (6.0, True)]:
        task.begin_valid_epoch(1, model)
        task.post_validate(model, {"loss": loss}, None)
        task.post_validate(model, {"loss": 100.0}, None)  # a second subset is not observed
        assert optimizer.averaging == switched
