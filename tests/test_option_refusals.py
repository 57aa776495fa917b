"""No option that silently does nothing and no traceback for a bad one: --max-tokens with the
stream task, --optimizer ntasgd outside it, --bf16 --cpu on several processes, sizes and
batch sizes below 1, a classifier checkpoint given to fairseq-eval-lm are one line each; a
mid-epoch resume with another --batch-size says which state it drops."""

import shutil

import pytest
from fairseq.data import Dictionary
from fairseq_cli_helpers import (
    TRAIN_DEFAULTS,
    USER_DIR,
    assert_one_line_error,
    binarize,
    real_text_lines,
    run,
    train,
)

from fairseq_awd import FairseqAWDError
from fairseq_awd.models.awd_rnn import AWDRNNConfig, encoder_arguments

pytestmark = pytest.mark.e2e  # runs fairseq's or the plugin's commands


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Real text binarized, and a tiny LM stopped mid-epoch (2 of ~90 windows)."""
    root = tmp_path_factory.mktemp("refusals")
    data = binarize(root / "bin", {"train": real_text_lines("train", 200),
                                   "valid": real_text_lines("valid", 60)})
    train(data, root / "ckpt", ["--max-update", "2", "--no-epoch-checkpoints"])
    return root, data


@pytest.mark.parametrize("options, fragments", [
    (["--max-tokens", "100"], ["--max-tokens 100 does not apply to awd_language_modeling",
                               "--batch-size streams"]),
    (["--batch-size", "-1"], ["--batch-size must be positive", "got -1"]),
    (["--batch-size", "0"], ["--batch-size must be positive", "got 0"]),
    (["--bf16", "--distributed-world-size", "2"], ["--bf16 --cpu runs in one process, not 2",
                                                   "drop --distributed-world-size"]),
])
def test_train_refuses(setup, tmp_path, options, fragments):
    _, data = setup
    proc = train(data, tmp_path / "ckpt", ["--max-update", "1", *options], check=False)
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_ntasgd_outside_the_plugins_task(setup, tmp_path):
    _, data = setup
    proc = run("train", [str(data), "--user-dir", USER_DIR, "--task", "language_modeling",
                         "--tokens-per-sample", "12", "--arch", "lstm_lm", "--optimizer",
                         "ntasgd", "--lr", "1", "--batch-size", "4", "--cpu", "--max-update", "1",
                         "--save-dir", str(tmp_path)], check=False)
    assert_one_line_error(proc, "--optimizer ntasgd needs --task awd_language_modeling",
                          "under --task language_modeling", "would never fire")


def test_eval_lm_refuses_a_classifier_checkpoint(setup, tmp_path):
    root, data = setup
    texts = {"train": real_text_lines("train", 40), "valid": real_text_lines("valid", 20)}
    cls = tmp_path / "cls"
    binarize(cls / "input0", texts, data / "dict.txt")
    binarize(cls / "label", {split: ["a\n", "b\n"] * (len(lines) // 2)
                             for split, lines in texts.items()})
    run("train", [str(cls), "--user-dir", USER_DIR, "--task", "awd_sentence_prediction",
                  "--criterion", "sentence_prediction", "--num-classes", "2", "--batch-size", "8",
                  "--required-batch-size-multiple", "1", "--optimizer", "adam", "--lr", "0.01",
                  "--cpu", "--arch", "awd_lstm_classifier", "--decoder-embed-dim", "8",
                  "--decoder-hidden-size", "8", "--decoder-layers", "1", "--max-update", "1",
                  "--save-dir", str(tmp_path / "ckpt"), "--no-epoch-checkpoints"])
    proc = run("eval_lm", [str(data), "--user-dir", USER_DIR, "--task", "awd_language_modeling",
                           "--path", str(tmp_path / "ckpt" / "checkpoint_last.pt"), "--cpu"],
               check=False)
    assert_one_line_error(proc, "the checkpoint holds model awd_lstm_classifier, which is not a "
                          "language model", "--task awd_language_modeling")


@pytest.mark.parametrize("option, value", [
    ("decoder_embed_dim", 0), ("decoder_hidden_size", 0), ("decoder_layers", 0),
    ("decoder_out_embed_dim", -1),
])
def test_sizes_below_one(option, value):
    cfg = AWDRNNConfig(**{"decoder_layers": 2, option: value})
    with pytest.raises(FairseqAWDError, match=f"--{option.replace('_', '-')} must be at least "
                                              f"1, got {value}"):
        encoder_arguments(Dictionary(), cfg, lambda *args: None)


def test_resume_with_another_batch_size_says_what_it_drops(setup, tmp_path):
    root, data = setup
    shutil.copytree(root / "ckpt", tmp_path / "ckpt")
    proc = train(data, tmp_path / "ckpt", ["--batch-size", "5", "--max-update", "3",
                                           "--no-epoch-checkpoints"])
    assert ("the checkpoint holds the recurrent states of 4 streams (its --batch-size), this "
            "run has 5: they are dropped, every stream restarts from zeros and the epoch goes "
            "on from window 2 of the new layout") in proc.stdout


def test_plain_lstm_lm_with_fairseqs_cross_entropy(setup, tmp_path):
    """fairseq's cross_entropy flattens targets with view(): the windows are contiguous."""
    _, data = setup
    train(data, tmp_path, ["--arch", "lstm_lm", "--decoder-embed-dim", "16",
                           "--decoder-hidden-size", "16", "--decoder-out-embed-dim", "16",
                           "--criterion", "cross_entropy", "--max-update", "2", "--no-save"])


@pytest.mark.parametrize("arch, task_option", [("transformer_lm", "max_target_positions"),
                                               ("awd_lstm_classifier", "max_positions")])
def test_an_architecture_of_another_task(setup, tmp_path, arch, task_option):
    """fairseq resolves the architecture's task options before any task code runs."""
    _, data = setup
    proc = run("train", [str(data), *TRAIN_DEFAULTS, "--arch", arch, "--max-update", "1",
                         "--save-dir", str(tmp_path / "ckpt")], check=False)
    assert_one_line_error(proc, f"--arch {arch} reads the task option {task_option}",
                          "--task awd_language_modeling does not have")


def test_restore_file_of_another_dictionary(setup, tmp_path):
    """The plugin's dictionary check raises inside fairseq's trainer, which re-raises it as
    a plain Exception: still one line, the plugin's."""
    root, _ = setup
    other = binarize(tmp_path / "other", {"train": real_text_lines("train", 200)[100:],
                                          "valid": real_text_lines("valid", 60)})
    assert len(Dictionary.load(str(other / "dict.txt"))) != len(
        Dictionary.load(str(setup[1] / "dict.txt")))
    proc = train(other, tmp_path / "ckpt", [
        "--max-update", "3", "--restore-file", str(root / "ckpt" / "checkpoint_last.pt")],
        check=False)
    assert_one_line_error(proc, "trained with a different dictionary than the data's dict.txt")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_preprocess_of_text_that_is_not_utf8(tmp_path, workers):
    """fairseq's own reader fails on it with "negative seek position -1"; with the plugin
    loaded, one line names the file and line."""
    text = tmp_path / "latin1.txt"
    text.write_bytes("the first line\ncaf\u00e9 au lait\n".encode("latin-1"))
    proc = run("preprocess", ["--only-source", "--trainpref", str(text), "--destdir",
                              str(tmp_path / "bin"), "--workers", workers, "--user-dir", USER_DIR],
               check=False)
    assert_one_line_error(proc, f"{text} is not UTF-8 text (line 2, byte 18)",
                          "fairseq-preprocess reads UTF-8", "iconv")
