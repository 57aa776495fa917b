"""Every recipe's training step (``scripts/recipe_utils.train_once``) survives a kill."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from fairseq_cli_helpers import REPO, TINY_MODEL, binarize, one_thread_env, real_text_lines

pytestmark = pytest.mark.e2e  # runs fairseq's or the plugin's commands


def test_an_interrupted_training_resumes_and_keeps_its_whole_log(tmp_path):
    """train_once (every recipe's training step) killed during epoch 2 of 3, run again:
    it resumes from checkpoint_last.pt, and its log has each epoch's validation once."""
    data = binarize(tmp_path / "bin", {"train": real_text_lines("train", 1500),
                                       "valid": real_text_lines("valid", 40)})
    save_dir = tmp_path / "lm"
    step = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
            "from recipe_utils import train_once; "
            "train_once(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:], 1)")
    cmd = [sys.executable, "-c", step, str(REPO / "scripts"), str(data), str(save_dir),
           "--task", "awd_language_modeling", *TINY_MODEL, "--criterion", "awd_cross_entropy",
           "--optimizer", "adam", "--lr", "0.003", "--batch-size", "4", "--bptt", "12",
           "--valid-batch-size", "4", "--max-epoch", "3", "--seed", "1"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=one_thread_env(), start_new_session=True)
    deadline = time.time() + 300
    while not (save_dir / "checkpoint_last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the step and its fairseq-train, as Ctrl-C would
    first.wait()
    log = tmp_path / "lm.log"
    assert not log.exists(), "the first run finished before it was interrupted"
    again = subprocess.run(cmd, capture_output=True, text=True, env=one_thread_env())
    assert again.returncode == 0, again.stderr[-3000:]
    text = log.read_text()
    assert "Loaded checkpoint" in text and "(epoch 2 @" in text
    epochs = re.findall(r"epoch (\d+) \| valid on 'valid' subset", text)
    assert epochs == ["001", "002", "003"], epochs
