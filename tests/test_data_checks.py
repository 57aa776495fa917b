"""Binarized data checked before it is scored: a ``.bin`` that disagrees with its ``.idx``
(cut short) or holds ids beyond the dictionary (binarized with another one) is one line
naming the file and the fix, in training, fairseq-eval-lm, fairseq-awd-eval and the
classifier task; intact data still gives its result."""

import shutil

import pytest
from fairseq.data import Dictionary
from fairseq_cli_helpers import (
    USER_DIR,
    assert_one_line_error,
    binarize,
    eval_lm_perplexity,
    real_text_lines,
    run,
    run_module,
    train,
)

from fairseq_awd import FairseqAWDError
from fairseq_awd.data.binarized_check import check_binarized

pytestmark = pytest.mark.e2e  # runs fairseq's or the plugin's commands

CLASSIFY = [
    "--user-dir", USER_DIR, "--task", "awd_sentence_prediction", "--criterion",
    "sentence_prediction", "--num-classes", "2", "--batch-size", "16",
    "--required-batch-size-multiple", "1", "--optimizer", "discriminative_adam", "--lr", "0.01",
    "--cpu", "--no-progress-bar", "--arch", "awd_lstm_classifier", "--decoder-embed-dim", "24",
    "--decoder-hidden-size", "40", "--decoder-layers", "2", "--max-update", "1", "--no-save",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny LM trained on real text, its data, data of another dictionary and a
    classification data set binarized with the LM's dict.txt."""
    root = tmp_path_factory.mktemp("data_checks")
    data = binarize(root / "bin", {"train": real_text_lines("train", 200),
                                   "valid": real_text_lines("valid", 60)})
    train(data, root / "ckpt", ["--max-update", "1", "--no-epoch-checkpoints"])
    other = binarize(root / "other", {"train": real_text_lines("valid", 200)})
    texts = {"train": real_text_lines("train", 60), "valid": real_text_lines("valid", 30)}
    binarize(root / "cls" / "input0", texts, data / "dict.txt")
    binarize(root / "cls" / "label", {split: [f"{len(line) % 2}\n" for line in lines]
                                      for split, lines in texts.items()})
    return root, data, root / "ckpt" / "checkpoint_last.pt", other


def cut(directory, relative, keep_bytes):
    """``relative`` (a .bin) in ``directory`` cut to ``keep_bytes`` bytes; its .idx intact."""
    path = directory / relative
    path.write_bytes(path.read_bytes()[:keep_bytes])
    return path


def copy(source, dest):
    shutil.copytree(source, dest)
    return dest


def eval_lm(data, checkpoint, check=False):
    return run("eval_lm", [str(data), "--user-dir", USER_DIR, "--task", "awd_language_modeling",
                           "--path", str(checkpoint), "--cpu", "--gen-subset", "valid"],
               check=check)


def test_eval_lm_refuses_a_cut_bin_and_scores_intact_data(setup, tmp_path):
    _, data, checkpoint, _ = setup
    assert eval_lm_perplexity(eval_lm(data, checkpoint, check=True).stdout) > 1
    bad = copy(data, tmp_path / "bin")
    cut(bad, "valid.bin", 1000 * 2)  # 1,000 whole uint16 tokens: readable, but not all
    line = assert_one_line_error(eval_lm(bad, checkpoint), f"{bad / 'valid.bin'} holds 2000 "
                                 "bytes", f"{bad / 'valid.idx'} records 60 sentences",
                                 "cut short", "fairseq-preprocess --only-source --validpref")
    assert f"--srcdict {bad / 'dict.txt'}" in line


def test_train_refuses_a_cut_train_bin(setup, tmp_path):
    _, data, _, _ = setup
    bad = copy(data, tmp_path / "bin")
    cut(bad, "train.bin", 777)  # not even a whole number of tokens
    proc = train(bad, tmp_path / "ckpt", ["--max-update", "1"], check=False)
    assert_one_line_error(proc, f"{bad / 'train.bin'} holds 777 bytes", "--trainpref")
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_data_of_another_dictionary_is_refused(setup, tmp_path):
    _, data, checkpoint, other = setup
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(data / "dict.txt", mixed / "dict.txt")  # the checkpoint's dictionary
    for suffix in ("bin", "idx"):
        shutil.copy(other / f"train.{suffix}", mixed / f"valid.{suffix}")
    proc = eval_lm(mixed, checkpoint)
    assert_one_line_error(proc, f"{mixed / 'valid.bin'} holds token id",
                          f"beyond the {len(Dictionary.load(str(data / 'dict.txt')))} types",
                          "binarized with another dictionary", "--srcdict")


def test_awd_eval_refuses_a_cut_bin(setup, tmp_path):
    _, data, checkpoint, _ = setup
    bad = copy(data, tmp_path / "bin")
    cut(bad, "valid.bin", 600)
    proc = run_module("fairseq_awd.evaluation.cli", [str(bad), "--path", str(checkpoint),
                                                     "--cpu", "--gen-subset", "valid"],
                      check=False)
    assert_one_line_error(proc, f"{bad / 'valid.bin'} holds 600 bytes")


@pytest.mark.parametrize("part", ["input0", "label"])
def test_classifier_refuses_a_cut_bin(setup, tmp_path, part):
    root, _, _, _ = setup
    bad = copy(root / "cls", tmp_path / "cls")
    path = bad / part / "train.bin"
    cut(bad, f"{part}/train.bin", path.stat().st_size - 4)
    proc = run("train", [str(bad), *CLASSIFY], check=False)
    assert_one_line_error(proc, f"{path} holds", f"--trainpref TEXT.{part}",
                          f"--srcdict {bad / part / 'dict.txt'}")


def test_check_binarized_directly(setup, tmp_path):
    _, data, _, _ = setup
    dictionary = Dictionary.load(str(data / "dict.txt"))
    check_binarized(str(data / "valid"), dictionary, "dict.txt", "--only-source")
    check_binarized(str(tmp_path / "absent"), dictionary, "dict.txt", "--only-source")
    bad = copy(data, tmp_path / "bin")
    (bad / "valid.idx").write_bytes((bad / "valid.idx").read_bytes()[:30])
    with pytest.raises(FairseqAWDError, match="valid.idx is not a readable fairseq index"):
        check_binarized(str(bad / "valid"), dictionary, "dict.txt", "--only-source")
    small = Dictionary()  # 4 special symbols: every word id of the data is beyond it
    with pytest.raises(FairseqAWDError, match="binarized with another dictionary"):
        check_binarized(str(data / "valid"), small, "dict.txt", "--only-source")
