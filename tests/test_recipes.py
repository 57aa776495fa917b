"""The paper recipes' command lines are accepted by fairseq and run (2 updates, on CPU)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fairseq_cli_helpers import REPO, binarize, one_thread_env, real_text_lines


@pytest.mark.parametrize("corpus", ["ptb", "wikitext-2"])
def test_recipe_runs_and_evaluates(corpus, tmp_path):
    data = binarize(tmp_path / "bin", {"train": real_text_lines("train", 300),
                                       "valid": real_text_lines("valid", 60),
                                       "test": real_text_lines("test", 10)})
    env = one_thread_env()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    batch = ["--batch-size", "8"] if corpus == "wikitext-2" else []  # tiny data: 80 streams
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "recipes" / "awd_lstm.sh"), corpus, str(data),
         str(tmp_path / "ckpt"), "--max-update", "2", "--cpu", "--no-progress-bar", *batch],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert output.count("Perplexity:") == 2
    # the paper's setting: PTB from the command line, WikiText-2 from its architecture
    expected = {
        "ptb": "'_name': 'awd_lstm_lm', 'decoder_embed_dim': 400, 'decoder_hidden_size': 1150, "
               "'decoder_layers': 3, 'decoder_out_embed_dim': None, 'untie_weights': False, "
               "'dropout': 0.4, 'dropouth': 0.25, 'dropouti': 0.4, 'dropoute': 0.1, 'wdrop': 0.5",
        "wikitext-2": "'_name': 'awd_lstm_lm_wt2', 'decoder_embed_dim': 400, "
                      "'decoder_hidden_size': 1150, 'decoder_layers': 3, "
                      "'decoder_out_embed_dim': None, 'untie_weights': False, 'dropout': 0.4, "
                      "'dropouth': 0.2, 'dropouti': 0.65, 'dropoute': 0.1, 'wdrop': 0.5",
    }[corpus]
    assert expected in output
