"""scripts/plot_valid_curve.py: validation lines of fairseq-train logs, and the picture."""

import subprocess
import sys

import pytest
from fairseq_cli_helpers import REPO

pytestmark = pytest.mark.e2e  # runs fairseq's or the plugin's commands

SCRIPT = REPO / "scripts" / "plot_valid_curve.py"
SIMPLE_LOG = """\
2026-12-01 19:54:21 | INFO | train_inner | epoch 001:    200 / 685 loss=8.1, ppl=300
2026-12-01 19:54:21 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 8.243 | \
nll_loss 8.243 | ppl 303.07 | wps 4778.6 | wpb 695.8 | bsz 10 | num_updates 685
2026-12-01 19:58:57 | INFO | valid | epoch 002 | valid on 'valid' subset | loss 7.7 | \
nll_loss 7.7 | ppl 208.6 | wps 5772.4 | wpb 695.8 | bsz 10 | num_updates 1370 | best_loss 7.7
"""
JSON_LOG = """\
2026-12-01 20:00:00 | INFO | valid | {"epoch": 1, "valid_loss": "6.9", "valid_ppl": "120.5"}
2026-12-01 20:01:00 | INFO | valid | {"epoch": 2, "valid_loss": "6.8", "valid_ppl": "111.25"}
"""


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("plot_valid_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reads_simple_and_json_logs(tmp_path):
    plot = load_script()
    (tmp_path / "a.log").write_text(SIMPLE_LOG)
    (tmp_path / "b.log").write_text(JSON_LOG)
    assert plot.valid_curve(tmp_path / "a.log") == [(1, 303.07), (2, 208.6)]
    assert plot.valid_curve(tmp_path / "b.log") == [(1, 120.5), (2, 111.25)]


def test_draws_a_chained_picture_and_refuses_a_log_without_validation(tmp_path):
    (tmp_path / "a.log").write_text(SIMPLE_LOG)
    (tmp_path / "b.log").write_text(JSON_LOG)
    out = tmp_path / "curve.png"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "a.log"),
                           str(tmp_path / "b.log"), "--chain", "--labels", "train", "finetune",
                           "--output", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty.log").write_text("nothing here\n")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "empty.log"),
                           "--output", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert proc.returncode != 0 and "no end-of-epoch validation lines" in proc.stderr
    assert not (tmp_path / "x.png").exists()


TIMED_LOG = """\
2026-12-01 20:00:00 | INFO | fairseq_cli.train | Start iterating over samples
2026-12-01 20:02:00 | INFO | fairseq_cli.train | begin validation on "valid" subset
2026-12-01 20:02:30 | INFO | valid | {"epoch": 1, "valid_loss": "9.9", "valid_ppl": "950.0"}
2026-12-01 20:04:30 | INFO | fairseq_cli.train | begin validation on "valid" subset
2026-12-01 20:05:00 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 8.2 | \
nll_loss 8.2 | ppl 300.5 | wps 4778.6 | num_updates 685
"""


def test_minutes_of_training_leave_out_the_validations(tmp_path):
    plot = load_script()
    (tmp_path / "t.log").write_text(TIMED_LOG)
    assert plot.valid_curve_by_time(tmp_path / "t.log") == [(2.0, 950.0), (4.0, 300.5)]
    out = tmp_path / "minutes.png"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "t.log"), "--minutes",
                           "--output", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
