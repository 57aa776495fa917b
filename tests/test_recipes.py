"""The recipes' command lines (scripts/recipes/awd.sh) are accepted by fairseq and run:
2 updates of the paper-sized models on CPU, then eval-lm on valid and test."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fairseq_cli_helpers import REPO, binarize, one_thread_env, real_text_lines

pytestmark = pytest.mark.e2e  # runs fairseq's or the plugin's commands

AWD_LSTM = ("'decoder_embed_dim': 400, 'decoder_hidden_size': 1150, 'decoder_layers': 3, "
            "'decoder_out_embed_dim': None, 'untie_weights': False, ")
AWD_QRNN = ("'decoder_embed_dim': 400, 'decoder_hidden_size': 1550, 'decoder_layers': 4, "
            "'decoder_out_embed_dim': None, 'untie_weights': False, ")
# recipe -> (extra options for tiny data, fragments of the configuration fairseq prints)
RECIPES = {
    "lstm-ptb": ([], [
        "'_name': 'awd_lstm_lm', " + AWD_LSTM + "'dropout': 0.4, 'dropouth': 0.25, "
        "'dropouti': 0.4, 'dropoute': 0.1, 'wdrop': 0.5", "'clip_norm': 0.25", "'seed': 141"]),
    "lstm-wikitext-2": (["--batch-size", "8"], [
        "'_name': 'awd_lstm_lm_wt2', " + AWD_LSTM + "'dropout': 0.4, 'dropouth': 0.2, "
        "'dropouti': 0.65, 'dropoute': 0.1, 'wdrop': 0.5", "'seed': 1882"]),
    "qrnn-ptb": ([], [
        "'_name': 'awd_qrnn_lm', " + AWD_QRNN + "'dropout': 0.4, 'dropouth': 0.3, "
        "'dropouti': 0.4, 'dropoute': 0.1, 'wdrop': 0.1", "'qrnn_window': 2",
        "'clip_norm': 0.2", "'seed': 9001"]),
    "qrnn-wikitext-2": (["--batch-size", "8"], [
        "'_name': 'awd_qrnn_lm_wt2', " + AWD_QRNN + "'dropout': 0.4, 'dropouth': 0.2, "
        "'dropouti': 0.4, 'dropoute': 0.1, 'wdrop': 0.1", "'clip_norm': 0.25", "'seed': 4002"]),
    "lstm-ptb-mos": ([], [
        "'_name': 'awd_lstm_lm_mos', 'decoder_embed_dim': 280, 'decoder_hidden_size': 960, "
        "'decoder_layers': 3, 'decoder_out_embed_dim': 620, 'untie_weights': False, "
        "'dropout': 0.4, 'dropouth': 0.225, 'dropouti': 0.4, 'dropoute': 0.1, 'wdrop': 0.5",
        "'mos_components': 15, 'dropoutl': 0.29", "'seed': 28", "'lr': [20.0]",
        "(mixture): MixtureOfSoftmaxes(",
        "(latent): Linear(in_features=620, out_features=4200, bias=True)"]),
    # the paper-sized WikiText-103 model does not fit tiny data: options after the recipe's
    # override them
    "qrnn-wikitext-103": ([
        "--decoder-embed-dim", "24", "--decoder-hidden-size", "40", "--decoder-layers", "2",
        "--adaptive-softmax-cutoff", "40,150,600", "--batch-size", "8", "--bptt", "12"], [
        "'_name': 'awd_qrnn_lm_wt103'", "'dropout': 0.1, 'dropouth': 0.1, 'dropouti': 0.1, "
        "'dropoute': 0.0, 'wdrop': 0.0, 'adaptive_softmax_cutoff': '40,150,600'",
        "'_name': 'adam'", "'when': [12]", "TiedAdaptiveSoftmax(vocab_size="]),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return binarize(tmp_path_factory.mktemp("recipes") / "bin", {
        "train": real_text_lines("train", 300), "valid": real_text_lines("valid", 60),
        "test": real_text_lines("test", 10)})


def run_recipe(recipe, data, save_dir, options, base_checkpoint=None):
    env = one_thread_env()
    if base_checkpoint is not None:
        env["BASE_CHECKPOINT"] = str(base_checkpoint)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "recipes" / "awd.sh"), recipe, str(data), str(save_dir),
         *options, "--max-update", "2", "--cpu", "--no-progress-bar"],
        capture_output=True, text=True, env=env, timeout=900,
    )


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_runs_and_evaluates(recipe, data, tmp_path):
    options, fragments = RECIPES[recipe]
    proc = run_recipe(recipe, data, tmp_path / "ckpt", options)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert output.count("Perplexity:") == 2
    for fragment in fragments:
        assert fragment in output


def test_unknown_recipe(data, tmp_path):
    proc = run_recipe("gru-ptb", data, tmp_path, [])
    assert proc.returncode == 1
    assert "unknown recipe 'gru-ptb'" in proc.stderr


def test_finetune_stage_restarts_from_the_trained_model_and_scores_the_cache(tmp_path):
    data = binarize(tmp_path / "bin", {
        "train": real_text_lines("train", 300), "valid": real_text_lines("valid", 60),
        "test": real_text_lines("test", 40)})
    tiny = ["--decoder-embed-dim", "24", "--decoder-hidden-size", "40", "--batch-size", "8"]
    base = run_recipe("lstm-ptb", data, tmp_path / "base", tiny)
    assert base.returncode == 0, base.stderr[-3000:]
    proc = run_recipe("lstm-ptb-finetune", data, tmp_path / "tuned", tiny,
                      base_checkpoint=tmp_path / "base" / "checkpoint_best.pt")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "'average_from_start': True" in output and "'seed': 141" in output
    assert "Loaded checkpoint " + str(tmp_path / "base" / "checkpoint_best.pt") in output
    # eval-lm on valid and test, then the cache pointer (window 500) on both
    assert output.count("Perplexity:") == 4
    assert "scoring test with --cache-theta 1, --cache-lambda 0.1" in output
    missing = run_recipe("lstm-ptb-finetune", data, tmp_path / "other", tiny,
                         base_checkpoint=tmp_path / "nothing.pt")
    assert missing.returncode == 1 and f"no {tmp_path / 'nothing.pt'} to fine-tune" in (
        missing.stderr)


# character-level recipe -> (data kind, fragments of the configuration fairseq prints)
CHAR_RECIPES = {
    "lstm-ptb-char": ("chars", "'_name': 'awd_lstm_lm', 'decoder_embed_dim': 200, "
                      "'decoder_hidden_size': 1000, 'decoder_layers': 3, "),
    "qrnn-ptb-char": ("chars", "'_name': 'awd_qrnn_lm', 'decoder_embed_dim': 200, "
                      "'decoder_hidden_size': 1000, 'decoder_layers': 6, "),
    "lstm-enwik8": ("bytes", "'_name': 'awd_lstm_lm', 'decoder_embed_dim': 400, "
                    "'decoder_hidden_size': 1840, 'decoder_layers': 3, "),
    "qrnn-enwik8": ("bytes", "'_name': 'awd_qrnn_lm', 'decoder_embed_dim': 400, "
                    "'decoder_hidden_size': 1840, 'decoder_layers': 4, "),
}
CHAR_SETTINGS = {  # the reference README's PTB-character and enwik8 commands
    "chars": ["'dropout': 0.1, 'dropouth': 0.25, 'dropouti': 0.1, 'dropoute': 0.0, 'wdrop': 0.5",
              "'bptt': 150", "'lr': [0.002]", "'when': [300, 400]", "'max_epoch': 500"],
    "bytes": ["'dropout': 0.4, 'dropouth': 0.1, 'dropouti': 0.1, 'dropoute': 0.0, 'wdrop': 0.2",
              "'bptt': 200", "'lr': [0.001]", "'when': [25, 35]", "'max_epoch': 50"],
}


@pytest.fixture(scope="module")
def char_data(tmp_path_factory):
    """Real text as the PTB character files write it and as enwik8's byte tokens."""
    sizes = {"train": 300, "valid": 60, "test": 10}
    lines = {split: real_text_lines(split, n) for split, n in sizes.items()}
    tmp = tmp_path_factory.mktemp("char_recipes")
    return {
        "chars": binarize(tmp / "chars", {split: [
            " _ ".join(" ".join(word) for word in line.split()) + "\n" for line in block]
            for split, block in lines.items()}),
        "bytes": binarize(tmp / "bytes", {split: [
            " ".join(str(b) for b in line.rstrip("\n").encode("utf-8")) + "\n" for line in block]
            for split, block in lines.items()}),
    }


@pytest.mark.parametrize("recipe", sorted(CHAR_RECIPES))
def test_char_recipe_runs_and_reports_bits_per_character(recipe, char_data, tmp_path):
    kind, model = CHAR_RECIPES[recipe]
    proc = run_recipe(recipe, char_data[kind], tmp_path / "ckpt", ["--batch-size", "4"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    for fragment in [model, *CHAR_SETTINGS[kind], "'_name': 'adam'", "'weight_decay': 1.2e-06",
                     "'alpha': 0.0, 'beta': 0.0", "'clip_norm': 0.25", "'seed': 1111"]:
        assert fragment in output, fragment
    # fairseq-awd-eval on valid and test: eval-lm's line, then bits per character
    assert output.count("Perplexity:") == 2
    assert len(re.findall(r"bpc [0-9.]+ \(counting line ends: [0-9.]+\)", output)) == 2
