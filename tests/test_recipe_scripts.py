"""The end-to-end Python recipes run on real data in a reduced (--limit) setting, print
their tables, resume without redoing work, and stop with one line on bad data paths."""

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

import pytest
from fairseq_cli_helpers import (
    REPO,
    SHARED_DATA,
    TINY_MODEL,
    assert_one_line_error,
    binarize,
    one_thread_env,
    real_text_lines,
)
from mt_fixtures import HAS_MULTI30K, MULTI30K, SKIP_REASON

HAS_ULMFIT_DATA = (SHARED_DATA / "rt-polarity" / "rt-polarity.pos").exists() and (
    SHARED_DATA / "wikitext-2" / "train.txt").exists()


def recipe(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *args],
                          capture_output=True, text=True, env=one_thread_env(), timeout=900)


def table_rows(stdout: str) -> dict:
    """``| name | v1 | ... |`` markdown rows of the printed table, name -> cells."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) > 1 and not cells[1].startswith("-"):
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.skipif(not HAS_MULTI30K, reason=SKIP_REASON)
def test_multi30k_recipe_prints_the_three_bleu_scores(tmp_path):
    work = tmp_path / "work"
    args = ["--data", str(MULTI30K), "--workdir", str(work), "--limit", "150",
            "--bpe-merges", "300", "--mt-max-update", "10", "--lm-max-epoch", "1", "--beam", "2",
            "--fusion-weights", "0.2", "--threads", "1"]
    proc = recipe("multi30k_rescoring.py", *args, "--seeds", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows(proc.stdout)
    decodings = ("beam search", "n-best reranking", "shallow fusion",
                 "ablation: reranking by length only")
    assert set(rows) == {"decoding", *decodings}, proc.stdout
    assert rows["decoding"] == ["seed 1", "mean +- sd", "vs beam search"]
    results = json.loads((work / "seed1" / "results.json").read_text())
    assert results["fusion_weight"] == 0.2
    beam = results["test_bleu"]["beam search"]
    for name in decodings:
        bleu = results["test_bleu"][name]
        assert rows[name][:2] == [f"{bleu:.2f}", f"{bleu:.2f} +- 0.00"]
        assert rows[name][2] == ("" if name == "beam search" else f"{bleu - beam:.2f} +- 0.00")
    # the rescorer tuned its weights on val (the ablation with the LM weight held at 0),
    # and the references are the raw test English
    assert re.search(r"tuned on .*valid\.nbest: lm_weight", proc.stdout)
    assert re.search(r"tuned on .*valid\.nbest: lm_weight 0 ", proc.stdout), proc.stdout
    refs = (work / "text" / "test.ref.en").read_text().splitlines()
    assert len(refs) == 150 and refs[0][0].isupper() and " ," not in refs[0]
    # a second run resumes: nothing is retrained, the same table comes out; a second seed
    # trains only its own models and adds its column, with the spread over both seeds
    again = recipe("multi30k_rescoring.py", *args, "--seeds", "1")
    assert again.returncode == 0 and "fairseq-train" not in again.stdout
    assert table_rows(again.stdout) == rows
    both = recipe("multi30k_rescoring.py", *args, "--seeds", "1", "2")
    assert both.returncode == 0, both.stderr[-3000:]
    assert both.stdout.count("+ fairseq-train") == 2 and "fairseq-preprocess" not in both.stdout
    two = table_rows(both.stdout)
    second = json.loads((work / "seed2" / "results.json").read_text())["test_bleu"]
    for name in decodings:
        values = [results["test_bleu"][name], second[name]]
        assert two[name][:2] == [f"{v:.2f}" for v in values]
        assert two[name][2] == f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f}"
    # other training options in the same workdir are refused, not given the old models
    lm_before = (work / "seed1" / "lm" / "checkpoint_best.pt").stat().st_mtime_ns
    longer_lm = list(args)
    longer_lm[args.index("--lm-max-epoch") + 1] = "2"
    changed = recipe("multi30k_rescoring.py", *longer_lm, "--seeds", "1")
    assert_one_line_error(changed, "seed1/lm was trained with other options",
                          "--max-epoch 1 -> --max-epoch 2", "use another --workdir")
    assert (work / "seed1" / "lm" / "checkpoint_best.pt").stat().st_mtime_ns == lm_before


def test_multi30k_recipe_names_a_missing_data_folder(tmp_path):
    proc = recipe("multi30k_rescoring.py", "--data", str(tmp_path / "nowhere"),
                  "--workdir", str(tmp_path / "work"))
    assert_one_line_error(proc, "point --data at the Multi30k folder")
    assert not (tmp_path / "work" / "text").exists()


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
            "--patience", "1", "--threads", "2"]
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
    assert "--reverse-tokens" in (work / "pretrain-backward.options.json").read_text()
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
