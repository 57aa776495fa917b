"""Bad input: one line naming the problem and the fix, non-zero exit, nothing overwritten."""

import hashlib

import pytest
from fairseq_cli_helpers import (
    USER_DIR,
    assert_one_line_error,
    binarize,
    real_text_lines,
    run,
    train,
)


def snapshot(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    lines = {"train": real_text_lines("train", 200), "valid": real_text_lines("valid", 60)}
    data = binarize(root / "bin", lines)
    save_dir = root / "ckpt"
    train(data, save_dir, ["--max-update", "2", "--no-epoch-checkpoints"])
    return root, data, save_dir


def test_split_too_small_keeps_existing_checkpoint(setup):
    _, data, save_dir = setup
    before = snapshot(save_dir)
    proc = train(data, save_dir, ["--batch-size", "5000"], check=False)
    assert_one_line_error(proc, "split 'train'", "--batch-size")
    assert snapshot(save_dir) == before


def test_empty_text(setup, tmp_path):
    root, _, _ = setup
    data = binarize(root / "empty", {"train": [], "valid": real_text_lines("valid", 60)})
    proc = train(data, tmp_path / "ckpt", [], check=False)
    assert_one_line_error(proc, "split 'train'", "empty")
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_checkpoint_dictionary_differs_from_data(setup):
    root, _, save_dir = setup
    other = binarize(root / "other", {"train": real_text_lines("valid", 200),
                                        "valid": real_text_lines("valid", 60)})
    proc = run("eval_lm", [str(other), "--user-dir", USER_DIR, "--task", "awd_language_modeling",
                           "--path", str(save_dir / "checkpoint_last.pt"), "--cpu",
                           "--gen-subset", "valid"], check=False)
    assert_one_line_error(proc, "different dictionary", "--srcdict")


def test_tied_weights_with_mismatched_sizes(setup, tmp_path):
    _, data, _ = setup
    proc = train(data, tmp_path, ["--decoder-out-embed-dim", "30"], check=False)
    assert_one_line_error(proc, "cannot tie", "--decoder-embed-dim", "--untie-weights")


def test_unknown_architecture_option(setup, tmp_path):
    _, data, _ = setup
    proc = train(data, tmp_path, ["--decoder-widgets", "3"], check=False)
    assert proc.returncode == 2
    assert "unrecognized arguments: --decoder-widgets 3" in proc.stderr


def test_missing_data_directory(setup, tmp_path):
    proc = train(tmp_path / "nowhere", tmp_path / "ckpt", [], check=False)
    assert_one_line_error(proc, "no dictionary", "fairseq-preprocess")


def test_streams_need_a_batch_size(setup, tmp_path):
    _, data, _ = setup
    proc = run("train", [str(data), "--user-dir", USER_DIR, "--task", "awd_language_modeling",
                         "--arch", "awd_lstm_lm", "--max-tokens", "1000", "--cpu",
                         "--save-dir", str(tmp_path)], check=False)
    assert_one_line_error(proc, "--batch-size")


def test_qrnn_window_other_than_one_or_two(setup, tmp_path):
    _, data, _ = setup
    proc = train(data, tmp_path, ["--arch", "awd_qrnn_lm", "--qrnn-window", "3"], check=False)
    assert_one_line_error(proc, "--qrnn-window must be 1 or 2, got 3")
