"""Device placement checked on the CPU (issue 31, item 3; docs/gpu.md, "Device placement,
checked on the CPU").

Each component runs with its model on the foreign device of ``foreign_device.py``, a stand-in
for a GPU: an operation that meets a CPU tensor where CUDA would refuse it raises
``MixedDevices``. Where the run is in fp32 it is compared with the same run on the CPU (same
seeds, so the same dropout masks), which shows that every operation ran; in bf16 and fp64
``check_dtypes`` also refuses operations mixing floating dtypes, and the outputs' dtypes are
checked. ``test_planted_*`` show that a CPU tensor (or an fp32 one) planted in the model
code makes these runs fail.
"""

import contextlib
import importlib
from types import SimpleNamespace

import pytest
import torch
from fairseq import optim, options
from fairseq import utils as fairseq_utils
from fairseq.criterions.sentence_prediction import (
    SentencePredictionConfig,
    SentencePredictionCriterion,
)
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.sequence_scorer import SequenceScorer
from fairseq_cli.eval_lm import eval_lm
from foreign_device import (
    ForeignTensor,
    MixedDevices,
    MixedDtypes,
    foreign,
    foreign_device,
    to_foreign_device,
)
from omegaconf import OmegaConf
from test_model_and_criterion import DICT, HID, B, E, T, make_model, make_task, make_tokens
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from fairseq_awd.criterions.awd_cross_entropy import AWDCrossEntropyCriterion
from fairseq_awd.data import BPTTStreams
from fairseq_awd.evaluation.scorers import (
    CachePointerLM,
    DynamicEvalLM,
    LineEndScores,
    collect_gradient_statistics,
)
from fairseq_awd.fusion import IncrementalFusionSequenceGenerator
from fairseq_awd.models.awd_lstm_classifier import (
    AWDLSTMClassifier,
    AWDLSTMClassifierConfig,
)
from fairseq_awd.models.awd_qrnn_classifier import (
    AWDQRNNClassifier,
    AWDQRNNClassifierConfig,
)
from fairseq_awd.modules import QRNN, LockedDropout, concat_pool, forget_mult_cuda
from fairseq_awd.modules.forget_mult import forget_mult_reference
from fairseq_awd.optim.discriminative_adam import DiscriminativeAdam, DiscriminativeAdamConfig
from fairseq_awd.optim.dynamic_eval import DynamicEvaluation
from fairseq_awd.optim.ntasgd import ntasgd_of, show_raw_weights
from fairseq_awd.rescoring.channel_scorer import ChannelScorer
from fairseq_awd.rescoring.lm_scorer import LMScorer
from fairseq_awd.tasks.awd_language_modeling import (
    AWDLanguageModelingConfig,
    AWDLanguageModelingTask,
)

forget_mult_module = importlib.import_module("fairseq_awd.modules.forget_mult")


@pytest.fixture(autouse=True)
def torch_weight_drop(monkeypatch):
    """Weight drop as on a GPU (``F.dropout``) in the CPU runs too: the C++ DropConnect is
    CPU-only and draws other masks, and the runs here are compared value for value."""
    monkeypatch.setattr(importlib.import_module("fairseq_awd.modules.drop_connect"),
                        "_cpu_extension", lambda: None)


def on(device: bool, check_dtypes: bool = False):
    """The foreign device's checks for a run on it, nothing for the CPU run."""
    return foreign_device(check_dtypes) if device else contextlib.nullcontext()


def mover(device: bool):
    """What puts an input where the model is."""
    return foreign if device else (lambda t: t)


def assert_on_device(*tensors, dtype=None) -> None:
    for t in tree_flatten(tensors)[0]:
        if isinstance(t, torch.Tensor):
            assert isinstance(t, ForeignTensor), f"a {tuple(t.shape)} tensor on {t.device}"
            assert dtype is None or t.dtype == dtype, (t.dtype, dtype)


def host(tree):
    """Tensors of a device run on the CPU, for comparing with the CPU run."""
    return tree_map(lambda t: t.cpu() if isinstance(t, torch.Tensor) else t, tree)


def assert_same(cpu, device, atol=1e-5) -> None:
    torch.testing.assert_close(host(device), cpu, rtol=1e-5, atol=atol)


def params_on_device(model, dtype=None) -> None:
    assert_on_device(list(model.parameters()), dtype=dtype)
    assert_on_device([p.grad for p in model.parameters() if p.grad is not None], dtype=dtype)


# ------------------------------------------------------------------ the foreign device


def test_the_foreign_device_refuses_what_cuda_refuses_and_allows_what_it_allows():
    real_meta = torch.empty(3, device="meta")  # outside foreign_device(): no data
    with foreign_device():
        x = foreign(torch.arange(6.0).view(2, 3))
        assert x.device.type == "meta" and not x.is_cuda and type(x * 2) is ForeignTensor
        with pytest.raises(MixedDevices, match=r"aten\.add\.Tensor .* \(3,\) torch\.float32"):
            x + torch.ones(3)
        with pytest.raises(MixedDevices, match="aten.cat"):
            torch.cat([x, torch.zeros(1, 3)])
        with pytest.raises(MixedDevices, match="a real meta tensor"):
            x + real_meta
        assert (x * torch.tensor(2.0)).tolist() == [[0, 2, 4], [6, 8, 10]]  # 0-dim CPU
        # factories follow the device they are given; without one they stay on the CPU
        for made in (torch.zeros(3, device=x.device), x.new_ones(3), torch.zeros_like(x),
                     torch.arange(3, device=x.device), torch.tensor([1, 2], device=x.device),
                     x.new_tensor([1.0]), torch.ones(3).to(x.device), torch.randn(2, 3).to(x)):
            assert type(made) is ForeignTensor
        assert type(torch.zeros(3)) is torch.Tensor and type(x.cpu()) is torch.Tensor
        assert type(x.to("cpu")) is torch.Tensor
        with pytest.raises(MixedDevices, match="CPU generator"):
            torch.randn(3, device=x.device, generator=torch.Generator().manual_seed(0))
        # what reads values back: CUDA synchronizes and allows it, but not numpy
        assert x.sum().item() == 15.0 and bool(x.sum() > 0) and x[1, 2].tolist() == 5.0
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()
        # CPU index tensors index a device tensor; a device index does not index a CPU one
        assert x[torch.tensor([1])].tolist() == [[3, 4, 5]]
        x[torch.tensor([True, False])] = 0.0
        assert x.tolist() == [[0, 0, 0], [3, 4, 5]]
        with pytest.raises(MixedDevices):
            torch.ones(2, 3)[foreign(torch.tensor([1]))]
        # copies across devices are what .to() and copy_ are for
        x.copy_(torch.ones(2, 3))
        assert x.sum().item() == 6.0


def test_the_error_names_the_fairseq_awd_line_and_backward_is_checked_too():
    outputs = foreign(torch.randn(4, 2, 3))
    with foreign_device(), pytest.raises(MixedDevices, match=r"concat_pooling\.py:\d+"):
        concat_pool(outputs, torch.zeros(2, 4, dtype=torch.bool))  # the mask left on the CPU

    class CPUInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * torch.full(grad.shape, 2.0)

    with foreign_device():
        x = foreign(torch.randn(3)).requires_grad_()
        with pytest.raises(MixedDevices, match="aten.mul.Tensor"):
            CPUInBackward.apply(x * 1).sum().backward()


def test_dtype_checks_refuse_an_fp32_tensor_meeting_a_bf16_one():
    with foreign_device(check_dtypes=True):
        x = foreign(torch.randn(2, 3, dtype=torch.bfloat16))
        assert (x * torch.tensor(2.0)).dtype == torch.bfloat16  # 0-dim: no promotion
        assert (x.float() * torch.ones(3, device=x.device)).dtype == torch.float32  # explicit
        with pytest.raises(MixedDtypes, match="bfloat16.*float32"):
            x * torch.ones(3, device=x.device)
    with foreign_device():  # without check_dtypes torch promotes silently, as on CUDA
        assert (x * torch.ones(3, device=x.device)).dtype == torch.float32


# ------------------------------------------------------------- language models, criterion

LM_CASES = {
    "lstm-softmax": ("lstm", {}),
    "lstm-adaptive": ("lstm", {"adaptive_softmax_cutoff": "10,20",
                               "adaptive_softmax_dropout": 0.2}),
    "lstm-mos": ("lstm", {"mos_components": 3, "decoder_out_embed_dim": 5}),
    "lstm-untied": ("lstm", {"untie_weights": True}),
    "qrnn-fo": ("qrnn", {}),
    "qrnn-ifo-zoneout-adaptive": ("qrnn", {"qrnn_pooling": "ifo", "zoneout": 0.2,
                                           "adaptive_softmax_cutoff": "12"}),
}


def language_model_run(case: str, device: bool, dtype=torch.float32):
    """Two BPTT windows of one stream in training (every dropout, weight drop, AR and TAR
    on), the second continuing from a state that came from a checkpoint (on the CPU), then
    exact log-probabilities at temperature 1 and 2 in evaluation."""
    kind, overrides = LM_CASES[case]
    model = make_model(kind=kind, **overrides)
    if device:
        to_foreign_device(model, dtype)
    else:
        model.to(dtype)
    criterion = AWDCrossEntropyCriterion(make_task(), alpha=2.0, beta=1.0)
    tokens, put = make_tokens(steps=2 * T + 1), mover(device)
    torch.manual_seed(3)
    results = {"losses": [], "outputs": []}
    with on(device, check_dtypes=dtype != torch.float32):
        model.train()
        for window in range(2):
            span = slice(window * T, (window + 1) * T)
            target = put(tokens[:, window * T + 1:(window + 1) * T + 1])
            sample = {"net_input": {"src_tokens": put(tokens[:, span]),
                                    "src_lengths": put(torch.full((B,), T)),
                                    "stream_id": "train", "stream_start": window == 0},
                      "target": target, "ntokens": target.numel(), "nsentences": B}
            loss, _, log = criterion(model, sample)
            loss.backward()
            results["losses"].append([loss, log["ar"], log["tar"], log["nll_loss"]])
            streams = model.decoder._streams  # as a resumed checkpoint leaves them
            streams["train"] = [(a.cpu(), b.cpu()) for a, b in streams["train"]]
        results["grads"] = [p.grad for p in model.parameters()]
        model.eval()
        with torch.no_grad():
            net_output = model(put(tokens[:, :T]))
            results["outputs"].append(net_output[0].clone())
            results["lprobs"] = model.get_normalized_probs(net_output, log_probs=True)
            net_output[0].div_(2.0)  # fairseq's generator for --temperature 2
            results["hot"] = model.get_normalized_probs(net_output, log_probs=True)
    if device:
        params_on_device(model, dtype)
        assert_on_device(results)
    return results, model


@pytest.mark.parametrize("case", sorted(LM_CASES))
def test_language_model_and_criterion_on_the_device(case):
    cpu, _ = language_model_run(case, device=False)
    device, model = language_model_run(case, device=True)
    assert all(p.grad is not None for p in model.parameters())
    assert_same(cpu, device, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("case", ["lstm-softmax", "lstm-adaptive", "lstm-mos",
                                  "qrnn-ifo-zoneout-adaptive"])
def test_language_model_follows_the_parameters_dtype(case, dtype):
    results, _ = language_model_run(case, device=True, dtype=dtype)
    # half precision: the softmax and the loss in fp32 (upcast_half); other dtypes as they are
    probs = torch.float32 if dtype == torch.bfloat16 else dtype
    assert all(o.dtype == dtype for o in results["outputs"])
    assert all(t.dtype == probs for t in results["losses"][0][:1] + [results["lprobs"]])
    assert results["hot"].dtype == probs
    assert all(g.dtype == dtype for g in results["grads"])


def test_a_checkpoint_on_the_cpu_loads_into_a_model_on_the_device():
    model, saved = make_model(seed=1), make_model(seed=2)
    to_foreign_device(model)
    weight = model.decoder.encoder.embed_tokens.weight
    assert not torch.equal(weight.cpu(), saved.decoder.encoder.embed_tokens.weight)
    with foreign_device():
        model.load_state_dict(saved.state_dict())
    params_on_device(model)
    torch.testing.assert_close(host(model.state_dict()), saved.state_dict(), rtol=0, atol=0)


def stream_resume_run(device: bool):
    """The trainer's path for one window (collate on the CPU, fairseq's move_to_cuda), a
    mid-epoch checkpoint of the iterator, and the next window after resuming from it."""
    cfg = OmegaConf.structured(AWDLanguageModelingConfig(
        data="unused", bptt=5, fixed_bptt=True, batch_size=2, train_subset="train", seed=1))
    task, model = AWDLanguageModelingTask(cfg, DICT), make_model()
    model.eval()
    if device:
        to_foreign_device(model)
    task.stateful_model = True
    task._stream_states.append({})  # what build_model does
    model.decoder.use_stream_states(task._stream_states[-1])
    dataset = BPTTStreams("train", make_tokens(seed=6, batch=1, steps=41).view(-1), 2, 6)
    criterion = AWDCrossEntropyCriterion(make_task(), alpha=2.0, beta=1.0)
    where, losses = next(model.parameters()).device, []
    with on(device), torch.no_grad():
        iterator = task.get_batch_iterator(dataset)
        sample = fairseq_utils.move_to_cuda(next(iterator.next_epoch_itr(shuffle=False)), where)
        losses.append(criterion(model, sample)[0])
        saved = iterator.state_dict()
        assert all(type(t) is torch.Tensor for pair in saved["stream_states"][0] for t in pair)
        task._stream_states[0].clear()  # a new process reads the checkpoint
        iterator = task.get_batch_iterator(dataset)
        iterator.load_state_dict(saved)
        sample = fairseq_utils.move_to_cuda(next(iterator.next_epoch_itr(shuffle=False)), where)
        losses.append(criterion(model, sample)[0])
    if device:
        assert_on_device(losses, list(task._stream_states[0]["train"]))
    return losses


def test_stream_states_are_checkpointed_on_the_cpu_and_resume_on_the_device():
    assert_same(stream_resume_run(False), stream_resume_run(True))


# ----------------------------------------------------------------- ForgetMult, QRNN stack


def qrnn_run(device: bool, dtype=torch.float32):
    torch.manual_seed(0)
    qrnn = QRNN(5, 6, num_layers=2, window=2, pooling="ifo", zoneout=0.1, weight_drop=0.2,
                dropout=0.2, bidirectional=True, batch_first=True)
    if device:
        to_foreign_device(qrnn, dtype)
    put = mover(device)
    g = torch.Generator().manual_seed(1)
    x = put(torch.randn(3, 7, 5, generator=g).to(dtype))
    mask = put(torch.arange(7).unsqueeze(0) < torch.tensor([[7], [4], [1]]))
    with on(device, check_dtypes=dtype != torch.float32):
        out, state = qrnn(x, put(torch.zeros(4, 3, 6, dtype=dtype)), mask=mask)
        out.float().pow(2).sum().backward()
    results = (out, state.cell, state.last_inputs, [p.grad for p in qrnn.parameters()])
    if device:
        assert_on_device(results)
        assert out.dtype == state.cell.dtype == dtype
    return results


def test_qrnn_stack_with_mask_both_directions_and_zoneout_on_the_device():
    assert_same(qrnn_run(False), qrnn_run(True))
    qrnn_run(True, torch.bfloat16)


@pytest.fixture
def cuda_forget_mult(monkeypatch):
    """ForgetMult's "cuda" backend picked for device tensors, with the launcher of
    forget_mult_cuda.py given a stand-in kernel: it checks that every pointer it would pass
    is a contiguous device tensor of the kernel's dtype (outputs allocated by the launcher
    included), then writes what the kernel writes (the reference, accumulated in fp32)."""
    launched = []

    def launch(direction, tensors, steps, columns, reverse, like):
        for t in tensors:
            assert t is None or (type(t) is ForeignTensor and t.dtype == like.dtype
                                 and t.is_contiguous()), (direction, t)
        launched.append(direction)
        data = [None if t is None else t.inner.float().view(-1, 1, columns) for t in tensors]
        if direction == "forward":
            f, x, gate, h0, _ = data
            h = forget_mult_reference(f, x, h0[0], input_gate=gate, reverse=reverse)
            tensors[4].inner.copy_(h.view(steps, columns))
            return
        f, x, gate, h0, _, grad_h = data[:6]
        leaves = [t.requires_grad_() for t in (f, x, gate, h0) if t is not None]
        with torch.enable_grad():
            h = forget_mult_reference(f, x, h0[0], input_gate=gate, reverse=reverse)
            grads = iter(torch.autograd.grad(h, leaves, grad_h))
        for out, source in zip(tensors[6:], (f, x, gate, h0)):
            if source is not None:
                out.inner.copy_(next(grads).view(out.shape))

    auto, kernels = forget_mult_module._auto_backend, forget_mult_module._kernels
    monkeypatch.setattr(forget_mult_cuda, "_launch", launch)
    monkeypatch.setattr(forget_mult_module, "_auto_backend",
                        lambda x: "cuda" if type(x) is ForeignTensor else auto(x))
    monkeypatch.setattr(forget_mult_module, "_kernels",
                        lambda backend, x: forget_mult_cuda if backend == "cuda"
                        else kernels(backend, x))
    return launched


def test_forget_mult_cuda_branch_and_launcher_allocate_on_the_device(cuda_forget_mult):
    cpu = qrnn_run(False)
    device = qrnn_run(True)
    assert cuda_forget_mult.count("forward") == 4 and cuda_forget_mult.count("backward") == 4
    assert_same(cpu, device)
    qrnn_run(True, torch.bfloat16)  # the kernel's own bf16, no upcast around it
    cpu, _ = language_model_run("qrnn-fo", device=False)
    device, _ = language_model_run("qrnn-fo", device=True)
    assert_same(cpu, device, atol=1e-4)


# ------------------------------------------------------------------------------ NT-ASGD

OPTIMIZERS = {  # fairseq's wrappers around NT-ASGD: extra options, model dtype
    "fp32": ([], torch.float32),
    "bf16-flat": (["--bf16"], torch.bfloat16),
    "fp16-flat": (["--fp16", "--fp16-init-scale", "16"], torch.float16),
    "bf16-no-flatten": (["--bf16", "--fp16-no-flatten-grads"], torch.bfloat16),
    "memory-efficient-bf16": (["--bf16", "--memory-efficient-bf16"], torch.bfloat16),
}


def ntasgd_run(wrapper: str, device: bool, monkeypatch):
    """Four updates of awd_language_modeling's train_step/optimizer_step with clipping,
    NT-ASGD averaging from the second; the model ends showing the average."""
    extra, dtype = OPTIMIZERS[wrapper]
    args = options.parse_args_and_arch(options.get_training_parser(), [
        "unused", "--task", "awd_language_modeling", "--arch", "awd_lstm_lm", "--cpu",
        "--optimizer", "ntasgd", "--lr", "2", "--weight-decay", "0.01", "--batch-size", "3",
        "--bptt", str(T), *extra])
    cfg = convert_namespace_to_omegaconf(args)
    # fairseq's flattened fp32 masters live on torch.cuda.current_device(): here the
    # device index of the model's parameters (None for the CPU and for meta)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: None)
    task = AWDLanguageModelingTask(cfg.task, DICT)
    model = make_model(dropoute=0.0)
    if device:
        to_foreign_device(model, dtype)
    else:
        model.to(dtype)
    params = list(model.parameters())
    initial = [p.detach().clone() for p in params]
    criterion = AWDCrossEntropyCriterion(make_task(), alpha=2.0, beta=1.0)
    tokens, put = make_tokens(steps=4 * 6 + 1), mover(device)
    torch.manual_seed(5)
    with on(device, check_dtypes=dtype != torch.float32):
        if cfg.common.memory_efficient_bf16:
            optimizer = optim.MemoryEfficientFP16Optimizer.build_optimizer(cfg, params)
        elif cfg.common.fp16 or cfg.common.bf16:
            optimizer = optim.FP16Optimizer.build_optimizer(cfg, params)
        else:
            optimizer = optim.build_optimizer(cfg.optimizer, params)
        ntasgd = ntasgd_of(optimizer)
        for update in range(4):
            span = slice(update * 6, (update + 1) * 6)
            sample = {"net_input": {"src_tokens": put(tokens[:, span]), "stream_id": "train",
                                    "stream_start": update == 0},
                      "target": put(tokens[:, update * 6 + 1:(update + 1) * 6 + 1]),
                      "ntokens": 18, "nsentences": 3}
            optimizer.zero_grad()
            task.train_step(sample, model, criterion, optimizer, update)
            optimizer.clip_grad_norm(0.25)
            task.optimizer_step(optimizer, model, update)
            if update == 0:
                ntasgd.start_averaging()
        assert ntasgd.swapped
        kept = [(ntasgd.state[p]["raw"], p.dtype) for group in ntasgd.param_groups
                for p in group["params"]]  # the raw iterate, set aside, NT-ASGD's dtype
        averaged = [p.detach().clone() for p in params]
        show_raw_weights(optimizer)
        raw = [p.detach().clone() for p in params]
    state = [ntasgd.state[p] for group in ntasgd.param_groups for p in group["params"]]
    if device:
        params_on_device(model, dtype)
        assert_on_device([p for group in ntasgd.param_groups for p in group["params"]])
        assert_on_device([s["ax"] for s in state], dtype=torch.float32)  # averaged in fp32
        assert all(isinstance(raw, ForeignTensor) and raw.dtype == d for raw, d in kept)
    return averaged, raw, max((r - i).abs().max().item() for r, i in zip(host(raw), host(initial)))


@pytest.mark.parametrize("wrapper", sorted(OPTIMIZERS))
def test_ntasgd_steps_averages_and_swaps_on_the_device(wrapper, monkeypatch):
    cpu_averaged, cpu_raw, _ = ntasgd_run(wrapper, False, monkeypatch)
    averaged, raw, moved = ntasgd_run(wrapper, True, monkeypatch)
    assert not all(torch.equal(a, r) for a, r in zip(cpu_averaged, cpu_raw))
    assert moved > 0.1  # the updates moved the weights by far more than the tolerance
    atol = 1e-5 if wrapper == "fp32" else 4e-3  # bf16/fp16: the CPU's LSTM kernel differs
    assert_same(cpu_averaged, averaged, atol=atol)
    assert_same(cpu_raw, raw, atol=atol)


# ---------------------------------------------- cache pointer, dynamic evaluation, eval_lm


def eval_task():
    cfg = OmegaConf.structured(AWDLanguageModelingConfig(
        data="unused", bptt=6, batch_size=None, max_tokens=None, valid_batch_size=2,
        train_subset="train", seed=1))
    task = AWDLanguageModelingTask(cfg, DICT)
    task.stateful_model = True
    tokens = make_tokens(seed=4, batch=1, steps=61).view(-1)
    tokens[::9] = DICT.eos()  # line ends, for bits per character
    task.load_streams = lambda split, streams, *rest: BPTTStreams(split, tokens, streams, 7)
    task.datasets["valid"] = task.load_streams("valid", 2)
    return task


def eval_run(setting: str, device: bool, dtype=torch.float32):
    """fairseq-awd-eval's scoring: fairseq's eval_lm over the streams, with the cache
    pointer and/or dynamic evaluation (after its gradient statistics), and bits per
    character."""
    task, model = eval_task(), make_model(kind="qrnn")
    model.decoder.use_stream_states({})
    if device:
        to_foreign_device(model, dtype)
    else:
        model.to(dtype)
    model.eval()
    with on(device, check_dtypes=dtype != torch.float32):
        scorer, optimizer = model, None
        if "dynamic" in setting:
            optimizer = DynamicEvaluation(model.parameters(), lr=0.0)
            assert collect_gradient_statistics(model, task, optimizer, "valid", 2, 5, 4) == 4
            optimizer.set_hyperparameters(1e-2, 2e-3)
            scorer = DynamicEvalLM(model, optimizer, DICT.pad())
        if "cache" in setting:
            scorer = CachePointerLM(scorer, window=4, theta=0.7, lambdah=0.2)
        scorer = LineEndScores(scorer, DICT)
        itr = task.eval_lm_dataloader(task.dataset("valid"))
        results = eval_lm([scorer], DICT, itr, target_dictionary=DICT)
        adapted = [p.detach().clone() for p in model.parameters()]
        if optimizer is not None:
            optimizer.reset()
    state = [] if optimizer is None else list(optimizer.state.values())
    if device:
        params_on_device(model, dtype)
        assert_on_device([[v for v in s.values() if isinstance(v, torch.Tensor)]
                          for s in state], dtype=dtype)
        assert_on_device(adapted, dtype=dtype)
    return [float(results["loss"]), scorer.sums, scorer.counts, adapted]


@pytest.mark.parametrize("setting", ["cache", "dynamic", "dynamic+cache"])
def test_eval_lm_with_cache_pointer_and_dynamic_evaluation_on_the_device(setting):
    cpu, device = eval_run(setting, False), eval_run(setting, True)
    assert_same(cpu, device, atol=1e-4)
    eval_run(setting, True, torch.bfloat16)


# --------------------------------------------------------- shallow fusion, the rescorer


def fusion_run(device: bool):
    """Beam search from prompts (awd_language_modeling's inference_step, as in
    fairseq-interactive) with an AWD-LSTM, and an AWD-QRNN fused incrementally."""
    model, lm = make_model(seed=0), make_model(seed=1, kind="qrnn", mos_components=2)
    model.eval()
    lm.eval()
    if device:
        to_foreign_device(model)
        to_foreign_device(lm)
    task = AWDLanguageModelingTask(OmegaConf.structured(AWDLanguageModelingConfig(
        data="unused", batch_size=None, max_tokens=None, train_subset="train", seed=1)), DICT)
    prompts, put = make_tokens()[:2, :3], mover(device)
    prompts[:, 0] = DICT.eos()  # as build_dataset_for_inference begins them
    with on(device), torch.no_grad():
        generator = IncrementalFusionSequenceGenerator([model], DICT, lm_model=lm,
                                                       lm_weight=0.5, beam_size=3, max_len_b=6)
        sample = {"net_input": {"src_tokens": put(prompts),
                                "src_lengths": put(torch.full((2,), 3))}}
        hypos = task.inference_step(generator, [model], sample)
    results = [[(h["tokens"], h["score"], h["positional_scores"]) for h in row] for row in hypos]
    assert all(h["tokens"][:2].tolist() == prompts[i, 1:].tolist()
               for i, row in enumerate(hypos) for h in row)
    if device:
        assert_on_device(results)
    return results


def test_incremental_shallow_fusion_beam_search_on_the_device():
    assert_same(fusion_run(False), fusion_run(True))


def rescorer_run(device: bool):
    model = make_model(kind="qrnn", adaptive_softmax_cutoff="10")
    model.eval()
    if device:
        to_foreign_device(model)
    hub = SimpleNamespace(models=[model], task=make_task())
    sentences = ["w3 w4 w5", "w1", "w7 unknown w9 w2 w2", ""]
    with on(device):
        return [[s.logprob, s.num_tokens, s.num_unk]
                for s in LMScorer(hub, batch_size=3).score(sentences)]


def test_rescorer_lm_scores_on_the_device():
    cpu, device = rescorer_run(False), rescorer_run(True)
    assert all(type(x) in (float, int) for row in device for x in row)
    assert_same(cpu, device)


class ChannelModel(nn.Module):
    """A stand-in for a reverse translation model: an AWD LM reading the target side."""

    def __init__(self):
        super().__init__()
        self.lm = make_model(kind="qrnn")

    def forward(self, src_tokens, src_lengths, prev_output_tokens):
        return self.lm(prev_output_tokens)

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return self.lm.get_normalized_probs(net_output, log_probs=log_probs)


def channel_run(device: bool):
    """ChannelScorer.score: fairseq's LanguagePairDataset batches moved to the model, and
    fairseq's SequenceScorer (forced decoding)."""
    model = ChannelModel().eval()
    if device:
        to_foreign_device(model)
    scorer = ChannelScorer.__new__(ChannelScorer)  # without a checkpoint to load
    scorer.model, scorer.batch_size, scorer.scorer = model, 2, SequenceScorer(DICT)
    scorer.task = SimpleNamespace(src_dict=DICT, tgt_dict=DICT, cfg=SimpleNamespace(
        left_pad_source=True, left_pad_target=False))
    with on(device):
        scores = scorer.score(["w1 w2 w3", "w4", "w5 w6"], ["w7 w8", "w9 w1 w2 w3", "x"])
    return [[s.logprob, s.num_tokens, s.num_unk] for s in scores]


def test_noisy_channel_scores_on_the_device():
    cpu, device = channel_run(False), channel_run(True)
    assert all(type(x) in (float, int) for row in device for x in row)
    assert_same(cpu, device)


# --------------------------------------------------------------------------- classifiers

CLASSIFIERS = {"lstm": (AWDLSTMClassifierConfig, AWDLSTMClassifier, "lstm"),
               "qrnn-reversed": (AWDQRNNClassifierConfig, AWDQRNNClassifier, "qrnn")}


def classifier_run(kind: str, device: bool, dtype=torch.float32):
    """ULMFiT: the encoder from a language model on the CPU, two updates of the
    sentence_prediction loss with discriminative Adam, then evaluation."""
    config_class, model_class, lm_kind = CLASSIFIERS[kind]
    dictionary = Dictionary()
    for symbol in list(DICT.symbols[DICT.nspecial:]) + ["<mask>"]:
        dictionary.add_symbol(symbol)
    labels = Dictionary()
    cfg = config_class(decoder_embed_dim=E, decoder_hidden_size=HID, decoder_layers=2,
                       dropout=0.2, dropouth=0.2, dropouti=0.2, dropoute=0.1, wdrop=0.3,
                       reverse_tokens=kind.endswith("reversed"), classifier_hidden_dim=7)
    torch.manual_seed(0)
    model = model_class.build_model(cfg, SimpleNamespace(source_dictionary=dictionary))
    model.register_classification_head("sentence_classification_head", num_classes=3)
    lm = make_model(seed=1, kind=lm_kind)
    if device:
        to_foreign_device(model, dtype)
    adam = OmegaConf.structured(DiscriminativeAdamConfig(lr=[0.01], tpu=False))
    optimizer = DiscriminativeAdam(adam, list(model.parameters()))
    criterion = SentencePredictionCriterion(
        SentencePredictionConfig(), SimpleNamespace(label_dictionary=labels,
                                                    target_dictionary=dictionary))
    tokens, put = make_tokens(seed=2, batch=4, steps=6), mover(device)
    tokens[1, 4:] = tokens[2, 1:] = dictionary.pad()  # right-padded
    sample = {"net_input": {"src_tokens": put(tokens),
                            "src_lengths": put(tokens.ne(dictionary.pad()).sum(1))},
              "target": put(torch.tensor([0, 2, 1, 2])), "ntokens": 18}
    torch.manual_seed(4)
    with on(device, check_dtypes=dtype != torch.float32):
        model.load_pretrained_encoder(lm.state_dict())
        model.train()
        for _ in range(2):
            optimizer.zero_grad()
            loss, _, log = criterion(model, sample)
            optimizer.backward(loss)
            optimizer.step()
        model.eval()
        with torch.no_grad():
            logits, extra = model(**sample["net_input"],
                                  classification_head_name="sentence_classification_head")
    results = [loss, log["ncorrect"], logits, extra["padding_mask"], list(model.parameters())]
    if device:
        params_on_device(model, dtype)
        assert_on_device(results)
        assert_on_device([list(s.values()) for s in optimizer.optimizer.state.values()])
        assert logits.dtype == dtype and loss.dtype == torch.float32
    return results


@pytest.mark.parametrize("kind", sorted(CLASSIFIERS))
def test_classifier_trains_and_classifies_on_the_device(kind):
    assert_same(classifier_run(kind, False), classifier_run(kind, True), atol=1e-4)
    classifier_run(kind, True, torch.bfloat16)


# ----------------------------------------------------------- the checks catch planted bugs


def test_planted_cpu_tensor_in_the_model_fails_the_language_model_run(monkeypatch):
    def cpu_mask(self, x, p):  # LockedDropout.forward with torch.empty(...): on the CPU
        if not self.training or p == 0:
            return x
        return x * torch.empty(1, x.size(1), x.size(2)).bernoulli_(1 - p) / (1 - p)

    monkeypatch.setattr(LockedDropout, "forward", cpu_mask)
    language_model_run("lstm-softmax", device=False)  # the CPU does not notice
    with pytest.raises(MixedDevices, match=r"awd_encoder\.py:\d+"):
        language_model_run("lstm-softmax", device=True)


def test_planted_fp32_tensor_in_the_model_fails_the_bf16_run(monkeypatch):
    def fp32_mask(self, x, p):  # the device given, the dtype forgotten
        if not self.training or p == 0:
            return x
        mask = torch.empty(1, x.size(1), x.size(2), device=x.device).bernoulli_(1 - p)
        return x * mask / (1 - p)

    monkeypatch.setattr(LockedDropout, "forward", fp32_mask)
    language_model_run("lstm-softmax", device=True)  # fp32: nothing to see
    with pytest.raises(MixedDtypes, match=r"awd_encoder\.py:\d+"):
        language_model_run("lstm-softmax", device=True, dtype=torch.bfloat16)
