"""Bad input: one line naming the problem and the fix, non-zero exit, nothing overwritten."""

import hashlib
import re
import shutil
import subprocess
import sys

import pytest
import torch
from fairseq_cli_helpers import (
    USER_DIR,
    assert_one_line_error,
    binarize,
    one_thread_env,
    real_text_lines,
    run,
    train,
)

pytestmark = pytest.mark.e2e  # runs fairseq's or the plugin's commands


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


def _truncated(source, dest):
    dest.write_bytes(source.read_bytes()[:5000])
    return dest


@pytest.mark.parametrize("kind", ["truncated", "text", "state dict"])
def test_eval_lm_refuses_an_unreadable_checkpoint(setup, tmp_path, kind):
    _, data, save_dir = setup
    bad = tmp_path / "bad.pt"
    if kind == "truncated":
        _truncated(save_dir / "checkpoint_last.pt", bad)
    elif kind == "text":
        bad.write_text("not a checkpoint\n")
    else:
        torch.save({"weight": torch.zeros(2)}, bad)
    (tmp_path / "good.pt").write_bytes((save_dir / "checkpoint_best.pt").read_bytes())
    proc = run("eval_lm", [str(data), "--user-dir", USER_DIR, "--task", "awd_language_modeling",
                           "--path", str(bad), "--cpu"], check=False)
    assert_one_line_error(proc, f"{bad} is not a readable fairseq checkpoint",
                          f"good.pt in {tmp_path} is readable (checked)", f"or remove {bad}")


def test_unreadable_checkpoint_recommends_only_a_readable_one(setup, tmp_path):
    _, data, save_dir = setup
    bad = _truncated(save_dir / "checkpoint_last.pt", tmp_path / "bad.pt")
    _truncated(save_dir / "checkpoint_last.pt", tmp_path / "newer_but_cut.pt")
    proc = run("eval_lm", [str(data), "--user-dir", USER_DIR, "--task", "awd_language_modeling",
                           "--path", str(bad), "--cpu"], check=False)
    line = assert_one_line_error(proc, f"no readable checkpoint in {tmp_path}")
    assert "newer_but_cut.pt" not in line
    proc = run("eval_lm", [str(data), "--user-dir", USER_DIR, "--task", "awd_language_modeling",
                           "--path", "/dev/null", "--cpu"], check=False)
    line = assert_one_line_error(proc, "/dev/null is not a readable fairseq checkpoint",
                                 "give a checkpoint file written by fairseq-train")
    assert "remove" not in line and line.count("/dev/") == 1


def test_resume_from_a_cut_checkpoint_last_uses_the_newest_readable_one(setup, tmp_path):
    _, data, save_dir = setup
    ckpt = tmp_path / "ckpt"
    shutil.copytree(save_dir, ckpt)
    _truncated(save_dir / "checkpoint_last.pt", ckpt / "checkpoint_last.pt")
    proc = train(data, ckpt, ["--max-update", "3", "--no-epoch-checkpoints"], check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(rf"WARNING .*{ckpt / 'checkpoint_last.pt'} is unreadable .*resuming from "
                     rf"{ckpt / 'checkpoint_best.pt'}", proc.stdout)
    assert re.search(r"Loaded checkpoint \S+checkpoint_best.pt \(epoch \d+ @ 2 updates\)",
                     proc.stdout)


def test_load_errors_other_than_a_bad_file_are_kept(setup, tmp_path):
    from fairseq import checkpoint_utils

    from fairseq_awd.checkpoint_compat import _unreadable

    with pytest.raises(FileNotFoundError):
        checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "missing.pt"))
    try:
        raise KeyError("model")
    except KeyError as err:
        assert _unreadable(err) == ""
    assert checkpoint_utils.load_checkpoint_to_cpu(str(setup[2] / "checkpoint_best.pt"))["model"]


@pytest.mark.parametrize("options, fragments", [
    (["--context-window", "10"], ["--context-window does not apply"]),
    (["--batch-size", "4"], ["--batch-size cannot batch evaluation", "--valid-batch-size N",
                             "--test-batch-size N"]),
    (["--max-tokens", "36000"], ["--max-tokens cannot batch evaluation"]),
])
def test_eval_lm_refuses_options_that_do_not_apply(setup, options, fragments):
    _, data, save_dir = setup
    proc = run("eval_lm", [str(data), "--user-dir", USER_DIR, "--task", "awd_language_modeling",
                           "--path", str(save_dir / "checkpoint_best.pt"), "--cpu",
                           "--gen-subset", "valid", *options], check=False)
    assert_one_line_error(proc, *fragments)


@pytest.mark.parametrize("options, message", [
    (["--valid-batch-size", "0"], "--valid-batch-size must be positive (the number of streams), "
                                  "got 0"),
    (["--test-batch-size", "0"], "--test-batch-size must be positive (the number of streams), "
                                 "got 0"),
    (["--bptt-std", "-1"], "--bptt-std must be non-negative, got -1.0"),
    (["--bptt-short-prob", "1.5"], "--bptt-short-prob must be in [0, 1], got 1.5"),
    (["--bptt-min", "0"], "--bptt-min must be positive, got 0"),
    (["--alpha", "-1"], "--alpha must be non-negative (0 turns AR off), got -1.0"),
    (["--beta", "-1"], "--beta must be non-negative (0 turns TAR off), got -1.0"),
])
def test_bad_task_and_criterion_options(setup, tmp_path, options, message):
    _, data, _ = setup
    proc = train(data, tmp_path / "ckpt", options, check=False)
    assert_one_line_error(proc, message)
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def _rescore(setup, nbest, output):
    _, data, save_dir = setup
    return subprocess.run(
        [sys.executable, "-m", "fairseq_awd.rescoring.cli", "--nbest", str(nbest), "--output",
         str(output), "--lm-weight", "1", "--lm", str(save_dir / "checkpoint_best.pt"),
         "--lm-data", str(data), "--cpu"],
        capture_output=True, text=True, env=one_thread_env(), timeout=300)


NBEST = "".join(f"S-{i}\tein Hund\nH-{i}\t-0.5\ta dog\nD-{i}\t-0.5\ta dog\nP-{i}\t-0.1 -0.2 -0.3\n"
                for i in range(3))


@pytest.mark.parametrize("content, message", [
    (NBEST[:NBEST.rindex("D-2") + 9], ":11: the file ends inside this line (no final newline)"),
    (NBEST[:NBEST.rindex("H-2") + 9], ":10: the file ends inside this line (no final newline)"),
    (NBEST[:NBEST.rindex("D-2")], ":10: H- line without the D- line that the other hypotheses"),
])
def test_rescore_refuses_a_cut_nbest_file(setup, tmp_path, content, message):
    nbest = tmp_path / "cut.nbest"
    nbest.write_text(content, encoding="utf-8")
    proc = _rescore(setup, nbest, tmp_path / "out.en")
    assert_one_line_error(proc, f"{nbest}{message}", "generate it again")
    assert list(tmp_path.iterdir()) == [nbest]


@pytest.mark.parametrize("link", [False, True])
def test_rescore_refuses_to_write_over_its_input(setup, tmp_path, link):
    nbest = tmp_path / "test.nbest"
    nbest.write_text(NBEST, encoding="utf-8")
    output = tmp_path / "alias.nbest" if link else f"{tmp_path}/./test.nbest"
    if link:
        output.symlink_to(nbest.name)
    proc = _rescore(setup, nbest, output)
    assert_one_line_error(proc, f"--output {output} is the --nbest file {nbest}",
                          "give another file")
    assert nbest.read_text(encoding="utf-8") == NBEST


@pytest.mark.parametrize("where, message", [
    ("checkpoint_dir", "no checkpoint directory"),
    ("checkpoint_file", "give checkpoint_file= one of checkpoint_best.pt, checkpoint_last.pt"),
    ("data", "no data directory"),
])
def test_from_pretrained_with_a_missing_path(setup, tmp_path, where, message):
    from fairseq_awd import FairseqAWDError, from_pretrained

    _, data, save_dir = setup
    paths = {"checkpoint_dir": str(save_dir), "data": str(data),
             "checkpoint_file": "checkpoint_best.pt"}
    paths[where] = str(tmp_path / "nowhere") if where != "checkpoint_file" else "nope.pt"
    with pytest.raises(FairseqAWDError, match=re.escape(message)) as err:
        from_pretrained(paths["checkpoint_dir"], paths["data"],
                        checkpoint_file=paths["checkpoint_file"])
    assert paths[where] in str(err.value)
