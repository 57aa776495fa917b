"""NT-ASGD and discriminative_adam under fairseq's --fp16, --bf16 and --memory-efficient-fp16
wrappers: which weights the model holds after each of the task's hooks."""

import copy

import pytest
import torch
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.optim import FP16Optimizer, MemoryEfficientFP16Optimizer
from fairseq_cli_helpers import binarize, json_logs, real_text_lines, train
from test_task import make_task

from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.optim.discriminative_adam import DiscriminativeAdam, set_layer_depth
from fairseq_awd.optim.ntasgd import NTASGD, ntasgd_of, show_raw_weights

pytestmark = pytest.mark.e2e  # runs fairseq's or the plugin's commands

LR = 0.5
# --fp16 flattens the fp32 masters into one CUDA tensor; on CPU fairseq needs them unflattened
PRECISIONS = {
    "fp16": (["--fp16", "--fp16-no-flatten-grads"], torch.float16, FP16Optimizer),
    "bf16": (["--bf16"], torch.bfloat16, FP16Optimizer),
    "memory-efficient-fp16": (["--fp16", "--memory-efficient-fp16"], torch.float16,
                              MemoryEfficientFP16Optimizer),
}
# on a GPU, --fp16 as users run it: the fp32 masters flattened into one CUDA tensor
CUDA_PRECISIONS = {"fp16": (["--fp16"], torch.float16, FP16Optimizer),
                   **{k: v for k, v in PRECISIONS.items() if k != "fp16"}}


def build(precision, optimizer_args, device="cpu"):
    flags, dtype, wrapper = (CUDA_PRECISIONS if device == "cuda" else PRECISIONS)[precision]
    argv = ["data", "--task", "awd_language_modeling", "--arch", "awd_lstm_lm", "--lr", str(LR),
            "--fp16-init-scale", "1", *optimizer_args, *flags]
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), argv))
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model = copy.deepcopy(reference).to(device, dtype)
    for depth, layer in enumerate(reversed(model)):
        for p in layer.parameters():
            set_layer_depth(p, depth)
    optimizer = wrapper.build_optimizer(cfg, list(model.parameters()))
    assert type(optimizer) is wrapper
    return model, optimizer, reference


def backward(optimizer, model, reference, step):
    """As fairseq's trainer: zero_grad, then a (scaled) backward whose gradient is a fixed
    random draw, representable in the model's dtype; the fp32 reference gets the same."""
    g = torch.Generator().manual_seed(step)
    optimizer.zero_grad()
    loss = 0
    for p, r in zip(model.parameters(), reference.parameters()):
        grad = torch.randn(p.shape, generator=g).to(p.dtype)
        loss = loss + (p * grad.to(p.device)).sum()
        r.grad = grad.float()
    optimizer.backward(loss)


def values(module):
    return [p.detach().float().cpu().clone() for p in module.parameters()]


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_ntasgd_average_reaches_the_model_and_raw_iterate_comes_back(precision):
    check_ntasgd_average(precision, "cpu")


def check_ntasgd_average(precision, device):
    """The model holds the fp32 average between updates and the raw iterate in them."""
    model, optimizer, reference = build(
        precision, ["--optimizer", "ntasgd", "--average-from-start", "--weight-decay", "0"],
        device)
    assert isinstance(ntasgd_of(optimizer), NTASGD)
    exact = NTASGD(reference.parameters(), lr=LR, average_from_start=True)
    task, tolerance = make_task(fixed_bptt=True), 1e-2
    for step in range(4):
        show_raw_weights(optimizer)  # what task.train_step does before the forward pass
        for mine, raw in zip(values(model), values(reference)):
            torch.testing.assert_close(mine, raw, rtol=0, atol=tolerance)
        backward(optimizer, model, reference, step)
        task.optimizer_step(optimizer, model, update_num=step)
        exact.step()
        # between updates (validation, checkpoints) the model holds the average
        exact.use_average_weights()
        averaged = values(reference)
        exact.use_raw_weights()
        for mine, average in zip(values(model), averaged):
            torch.testing.assert_close(mine, average, rtol=0, atol=tolerance)
        if step >= 2:  # the mean of iterates 2.. differs from the last one
            assert any((a - r).abs().max() > 0.05 for a, r in zip(averaged, values(reference)))
    # the optimizer's state (what checkpoints save) holds fp32 averages and the raw iterate
    state = ntasgd_of(optimizer).state
    assert all(s["ax"].dtype == torch.float32 for s in state.values())
    assert ntasgd_of(optimizer).swapped


@pytest.mark.parametrize("precision", ["fp16", "bf16", "memory-efficient-fp16"])
def test_discriminative_adam_keeps_its_layer_rates(precision):
    model, optimizer, _ = build(precision, ["--optimizer", "discriminative_adam",
                                            "--discriminative-lr-factor", "2"])
    groups = optimizer.param_groups  # those of the torch Adam inside the wrapper
    assert [(g["layer_depth"], g["lr"], len(g["params"])) for g in groups] == [
        (0, LR, 2), (1, LR / 2, 2)]
    before = [[p.detach().float().clone() for p in g["params"]] for g in groups]
    for group in groups:
        for p in group["params"]:
            p.grad = torch.ones_like(p)
    optimizer.optimizer.step()  # the torch Adam on the params it holds (fp32 copies or not)
    for group, old in zip(groups, before):  # Adam's first step moves every weight by -lr
        for p, q in zip(group["params"], old):
            torch.testing.assert_close(q - p.detach().float(), torch.full_like(q, group["lr"]),
                                       rtol=1e-2, atol=0)


def test_discriminative_adam_refuses_untagged_parameters():
    """fairseq's default --fp16 hands the optimizer one flat fp32 copy without tags."""
    argv = ["data", "--task", "awd_language_modeling", "--arch", "awd_lstm_lm",
            "--optimizer", "discriminative_adam"]
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), argv))
    with pytest.raises(FairseqAWDError, match="--fp16-no-flatten-grads"):
        DiscriminativeAdam(cfg.optimizer, [torch.nn.Parameter(torch.zeros(10))])


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    lines = {"train": real_text_lines("train", 300), "valid": real_text_lines("valid", 60)}
    return binarize(tmp_path_factory.mktemp("bf16") / "bin", lines)


@pytest.mark.parametrize("arch", ["awd_lstm_lm", "awd_qrnn_lm"])
def test_bf16_on_cpu_trains_a_bf16_model_as_well_as_fp32(arch, small_corpus, tmp_path):
    """fairseq's --bf16 with --cpu (which fairseq turns into --tpu): a bf16 model with fp32
    masters whose validation perplexity after an epoch is within 2% of the fp32 run's."""
    ppl, logs = {}, {}
    for precision, flags in (("fp32", []), ("bf16", ["--bf16"])):
        proc = train(small_corpus, tmp_path / precision,
                     ["--arch", arch, "--max-epoch", "1", "--no-epoch-checkpoints", *flags])
        logs[precision] = proc.stdout + proc.stderr
        ppl[precision] = float(json_logs(logs[precision], "valid")[-1]["valid_ppl"])
    assert "bf16 model with fp32 master weights on the CPU" in logs["bf16"]
    assert "fp32 master weights" not in logs["fp32"]
    assert abs(ppl["bf16"] / ppl["fp32"] - 1) < 0.02, ppl
    for precision in ppl:  # fairseq saves weights in fp32; the bf16 model's are bf16 values
        state = torch.load(tmp_path / precision / "checkpoint_last.pt", weights_only=False)
        weights = [t for t in state["model"].values() if t.is_floating_point()]
        in_bf16 = all(torch.equal(t.bfloat16().float(), t) for t in weights)
        assert in_bf16 == (precision == "bf16"), precision
    assert state["cfg"]["common"]["bf16"] and not state["cfg"]["common"]["tpu"]
