"""The ULMFiT recipe runs on real data in a reduced (--limit) setting, prints every
variant, resumes without redoing work, and stops with one line on a malformed file."""

import json

import pytest
from fairseq_cli_helpers import SHARED_DATA, assert_one_line_error, recipe, table_rows

pytestmark = pytest.mark.e2e  # runs fairseq's or the plugin's commands

HAS_ULMFIT_DATA = (SHARED_DATA / "rt-polarity" / "rt-polarity.pos").exists() and (
    SHARED_DATA / "wikitext-2" / "train.txt").exists()


def polarity_tsv(folder, n_train: int, n_test: int):
    """``label<TAB>text`` train and test files from the first rt-polarity snippets."""
    snippets = {label: (SHARED_DATA / "rt-polarity" / f"rt-polarity.{label}").read_text(
        encoding="utf-8").splitlines() for label in ("pos", "neg")}
    rows = [f"{label}\t{snippets[label][i].strip()}" for i in range(n_train + n_test)
            for label in ("pos", "neg")]
    folder.mkdir()
    (folder / "train.tsv").write_text("\n".join(rows[:2 * n_train]) + "\n", encoding="utf-8")
    (folder / "test.tsv").write_text("\n".join(rows[2 * n_train:]) + "\n", encoding="utf-8")
    return folder / "train.tsv", folder / "test.tsv"


@pytest.mark.skipif(not HAS_ULMFIT_DATA, reason="needs ../shared/data/rt-polarity and wikitext-2")
def test_ulmfit_recipe_on_tsv_files_prints_every_variant(tmp_path):
    train, test = polarity_tsv(tmp_path / "polarity", 120, 30)
    work = tmp_path / "work"
    args = ["--train", str(train), "--test", str(test), "--pretrain-text",
            str(SHARED_DATA / "wikitext-2"), "--workdir", str(work), "--limit", "300",
            "--seeds", "1", "--embed-dim", "24", "--hidden-size", "40", "--layers", "2",
            "--pretrain-epochs", "1", "--finetune-epochs", "1", "--classifier-epochs", "5",
            "--patience", "1", "--threads", "2", "--bf16"]
    proc = recipe("ulmfit.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows(proc.stdout)
    variants = ("scratch", "pretrained", "forward", "backward", "ensemble")
    assert set(rows) == {"classifier", *variants}, proc.stdout
    results = json.loads((work / "results.json").read_text())
    for variant in variants:
        error = results["test_error"][variant]["1"]
        assert 0.0 <= error <= 100.0 and rows[variant][0] == f"{error:.1f}"
    assert len(results["pretrain_valid_ppl"]["backward"]) == 1
    assert set(results["seconds"]) == {"prepare", "pretrain", "finetune", "classifiers",
                                       "scoring"}
    # the held-out examples are a draw from the training file, never from the test file
    valid = (work / "data" / "text" / "valid.input").read_text().splitlines()
    assert len(valid) == 48 and set(valid) <= {
        line.split("\t")[1] for line in train.read_text().splitlines()}
    # the backward LM read reversed streams; its classifier reads reversed sentences
    pretrain_options = json.loads((work / "pretrain-backward.options.json").read_text())
    assert "--reverse-tokens" in pretrain_options and "--bf16" in pretrain_options
    assert pretrain_options[pretrain_options.index("--stop-time-hours") + 1] == "0.6"
    assert "--bf16" in json.loads((work / "seed1" / "backward.options.json").read_text())
    log = (work / "seed1" / "backward.log").read_text()
    assert "encoder from --pretrained-lm" in log and "gradual unfreezing: epoch 2" in log
    # a second run finds every step done and prints the same table
    again = recipe("ulmfit.py", *args)
    assert again.returncode == 0 and "fairseq-train" not in again.stdout
    assert table_rows(again.stdout) == rows


def test_ulmfit_recipe_names_a_malformed_line(tmp_path):
    (tmp_path / "train.tsv").write_text("pos\tgood\nneg bad, no tab\n")
    (tmp_path / "test.tsv").write_text("pos\tfine\n")
    proc = recipe("ulmfit.py", "--train", str(tmp_path / "train.tsv"), "--test",
                  str(tmp_path / "test.tsv"), "--pretrain-text", str(tmp_path),
                  "--workdir", str(tmp_path / "w"))
    assert_one_line_error(proc, "train.tsv:2: no tab", "label<TAB>text")
    assert not (tmp_path / "w").exists()
