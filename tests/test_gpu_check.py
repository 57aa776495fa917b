"""``scripts/gpu_check.sh --cpu-dry-run``: every step of the GPU acceptance run, on the CPU,
so that the script CI cannot run on a GPU still runs."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # runs fairseq's or the plugin's commands

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_runs_every_step(tmp_path):
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--cpu-dry-run", "--out",
         str(tmp_path)], env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin",
                              "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = (tmp_path / "summary.md").read_text()
    # the install would add only the plugin: torch and numpy stay as they are
    assert "Would install fairseq_awd" in summary
    assert not any(f" {name}-" in summary for name in ("torch", "numpy"))
    assert "skipped" in summary and "deselected" in summary  # pytest -m cuda, all skipped
    checks = summary.split("## the GPU path's CPU checks")[1].split("## ")[0]
    assert " passed" in checks and "failed" not in checks.lower()
    assert "| 2 | 8 | 16 |" in summary  # the layer benchmark's one size
    for precision in ("fp32", "bf16"):
        assert f"### {precision}" in summary
        assert (tmp_path / f"train_{precision}.json").exists()
    assert summary.count("B: plain PyTorch loop") == 2


def test_gpu_check_refuses_an_unknown_option(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--gpus", "2"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown option --gpus" in proc.stderr
