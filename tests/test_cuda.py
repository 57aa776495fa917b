"""The GPU paths that CPU runs cannot reach: weight drop on cuDNN and NT-ASGD averaging
under --fp16/--bf16 with CUDA masters (the ForgetMult kernel's tests are in
test_forget_mult.py). Run by ``scripts/gpu_check.sh`` (``pytest -m cuda``)."""

import pytest
import torch
import torch.nn.functional as F
from cuda_marks import needs_cuda
from test_mixed_precision import CUDA_PRECISIONS, check_ntasgd_average
from torch.func import functional_call

from fairseq_awd.modules.weight_drop import WeightDropLSTM


@needs_cuda
def test_weight_drop_runs_one_cudnn_call_per_sequence():
    torch.manual_seed(0)
    layer = WeightDropLSTM(16, 32, weight_dropout=0.5).cuda().train()
    x = torch.randn(50, 4, 16, device="cuda", requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.manual_seed(1)
        out, _ = layer(x)
        out.sum().backward()
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get("aten::_cudnn_rnn") == 1  # the whole sequence in one fused call
    assert "aten::lstm_cell" not in calls and "aten::_thnn_fused_lstm_cell" not in calls
    # the same output as the LSTM run with the dropped matrix U * M / (1 - p)
    torch.manual_seed(1)
    dropped = F.dropout(layer.lstm.weight_hh_l0, 0.5, training=True)
    expected, _ = functional_call(layer.lstm, {"weight_hh_l0": dropped}, (x,))
    torch.testing.assert_close(out, expected)
    assert layer.lstm.weight_hh_l0.grad is not None and x.grad is not None


@needs_cuda
@pytest.mark.parametrize("precision", sorted(CUDA_PRECISIONS))
def test_ntasgd_average_with_cuda_masters(precision):
    check_ntasgd_average(precision, "cuda")
