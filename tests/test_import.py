"""Importing the plugin registers components and changes no other global state."""

import subprocess
import sys

import pytest
from fairseq_cli_helpers import REPO, one_thread_env

pytestmark = pytest.mark.e2e  # runs fairseq's or the plugin's commands

PROBE = ("import sys; before = sys.excepthook; import fairseq_awd; "
         "print(sys.excepthook is before)")


def python(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                          env=one_thread_env(), timeout=300)


def test_library_import_keeps_the_excepthook():
    proc = python("-c", PROBE)
    assert proc.stdout.strip() == "True", proc.stderr[-2000:]


def test_plugin_commands_report_bad_input_as_one_line(tmp_path):
    proc = python("-m", "fairseq_awd.evaluation.cli", str(tmp_path / "missing"), "--path",
                  str(tmp_path / "missing.pt"))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("fairseq_awd: error:") and "Traceback" not in proc.stderr
