"""scripts/profile_training.py: real fairseq-train updates under torch.profiler, a table of
operators and one of kinds of work whose shares add up."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from fairseq_cli_helpers import TINY_MODEL, TRAIN_DEFAULTS, binarize, one_thread_env

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "profile_training.py"
sys.path.insert(0, str(SCRIPT.parent))

import profile_training  # noqa: E402


def test_kinds_of_work_by_operator_name():
    assert profile_training.kind_of("aten::addmm") == "matrix products"
    assert profile_training.kind_of("aten::mkldnn_rnn_layer_backward") == "matrix products"
    assert profile_training.kind_of("_ForgetMultFunctionBackward") == "ForgetMult"
    assert profile_training.kind_of("aten::_log_softmax") == "softmax and loss"
    assert profile_training.kind_of("aten::copy_") == "dtype conversions and copies"
    assert profile_training.kind_of("Optimizer.step#NTASGD.step") == "optimizer"
    assert profile_training.kind_of("aten::tanh") == "other"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=one_thread_env(), timeout=300)


def tiny_data(tmp_path):
    words = "the cat sat on the mat and the dog ran to the park".split()
    lines = [" ".join(words[i % 5:] + words[:i % 5]) for i in range(60)]
    return binarize(tmp_path / "bin", {"train": lines, "valid": lines[:8], "test": lines[:8]})


@pytest.mark.parametrize("arch", [[], ["--arch", "awd_qrnn_lm"]])
def test_profiles_real_updates(tmp_path, arch):
    data = tiny_data(tmp_path)
    proc = run("--updates", "2", "--warmup", "1", "--top", "5", "--",
               str(data), *TRAIN_DEFAULTS, *TINY_MODEL, *arch, "--no-save")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"^2 updates, [0-9.]+ s wall", out, re.M), out
    operators = [line for line in out.splitlines() if line.startswith("| `")]
    assert len(operators) == 5
    kinds = dict(re.findall(r"^\| ([a-zA-Z ]+) \| [0-9.]+ \| ([0-9.]+)% \|$", out, re.M))
    assert "matrix products" in kinds and "optimizer" in kinds
    assert sum(float(share) for share in kinds.values()) == pytest.approx(100, abs=0.6)
    if arch:
        assert "ForgetMult" in kinds


def test_too_few_updates_and_missing_command_line_are_refused(tmp_path):
    data = tiny_data(tmp_path)
    proc = run("--updates", "500", "--", str(data), *TRAIN_DEFAULTS, *TINY_MODEL, "--no-save")
    assert proc.returncode != 0 and "fewer than --warmup + --updates" in proc.stderr
    proc = run("--updates", "2")
    assert proc.returncode != 0 and "after `--`" in proc.stderr
