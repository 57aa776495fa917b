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

pytestmark = pytest.mark.e2e  # runs fairseq's or the plugin's commands

HAS_ULMFIT_DATA = (SHARED_DATA / "rt-polarity" / "rt-polarity.pos").exists() and (
    SHARED_DATA / "wikitext-2" / "train.txt").exists()


def recipe(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *args],
                          capture_output=True, text=True, env=one_thread_env(), timeout=1800)


def table_rows(stdout: str) -> dict:
    """``| name | v1 | ... |`` markdown rows of the printed table, name -> cells."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) > 1 and not cells[1].startswith("-"):
            rows[cells[0]] = cells[1:]
    return rows


def markdown_tables(stdout: str) -> list:
    """Every markdown table printed, in order, each as ``table_rows`` gives it."""
    tables, current = [], []
    for line in stdout.splitlines() + [""]:
        if line.startswith("| "):
            current.append(line)
        elif current:
            tables.append(table_rows("\n".join(current)))
            current = []
    return tables


@pytest.mark.skipif(not HAS_MULTI30K, reason=SKIP_REASON)
def test_multi30k_recipe_prints_a_table_per_test_set(tmp_path):
    work = tmp_path / "work"
    args = ["--data", str(MULTI30K), "--limit", "150", "--bpe-merges", "300",
            "--mt-max-update", "10", "--lm-max-epoch", "1", "--beam", "3",
            "--fusion-weights", "0.2", "--threads", "2"]
    proc = recipe("multi30k_rescoring.py", *args, "--workdir", str(work), "--seeds", "1", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("+ fairseq-train") == 6  # per seed: translation, channel, LM
    *bleu_tables, ratios = markdown_tables(proc.stdout)
    sets = ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco")
    assert len(bleu_tables) == 3 and all(f"{name} BLEU" in proc.stdout for name in sets)
    decodings = ("beam search", "LM reranking", "noisy-channel reranking",
                 "ablation: length only", "old: LM + word bonus", "incremental fusion")
    results = {seed: json.loads((work / f"seed{seed}" / "results.json").read_text())
               for seed in (1, 2)}
    for name, rows in zip(sets, bleu_tables):
        assert set(rows) == {"decoding", *decodings}, proc.stdout
        assert rows["decoding"] == ["seed 1", "seed 2", "mean +- sd", "vs beam search", "p"]
        for decoding in decodings:
            bleu = [results[s]["bleu"][name][decoding] for s in (1, 2)]
            beam = [results[s]["bleu"][name]["beam search"] for s in (1, 2)]
            assert rows[decoding][:3] == [f"{bleu[0]:.2f}", f"{bleu[1]:.2f}",
                                          f"{statistics.mean(bleu):.2f} +- "
                                          f"{statistics.stdev(bleu):.2f}"]
            if decoding != "beam search":
                gains = [b - a for a, b in zip(beam, bleu)]
                assert rows[decoding][3] == (f"{statistics.mean(gains):.2f} +- "
                                             f"{statistics.stdev(gains):.2f}")
                p = [results[s]["p_value"][name][decoding] for s in (1, 2)]
                assert rows[decoding][4] == f"{p[0]:.3f} / {p[1]:.3f}" and 0 < min(p) <= 1
    assert list(ratios["decoding"]) == list(sets) and set(ratios) == {"decoding", *decodings}
    # weights are tuned on val alone (written per reranker) and the test sets are reranked
    # with them fixed: no rescoring of a test set tunes anything
    commands = [line for line in proc.stdout.splitlines() if line.startswith("+ fairseq-awd-")]
    assert len(commands) == 2 * 4 * 4  # seeds x rerankers x (val + 3 test sets)
    for command in commands:
        options = command.split()
        if "--tune-nbest" in options:
            assert options[options.index("--tune-nbest") + 1].endswith("/valid.nbest")
            assert options[options.index("--nbest") + 1].endswith("/valid.nbest")
        else:
            assert options[options.index("--nbest") + 1].rsplit("/", 1)[1] in (
                "test.nbest", "test1.nbest", "test2.nbest")
    weights = results[1]["weights"]["noisy-channel reranking"]
    assert set(weights["weights"]) == {"lm", "length", "channel"}
    assert weights["length_feature"] == "source-gap" and weights["length_ratio"] > 0
    assert results[1]["weights"]["ablation: length only"]["weights"]["lm"] == 0.0
    refs = (work / "text" / "test1.ref.en").read_text().splitlines()
    assert len(refs) == 150 and refs[0][0].isupper() and " ," not in refs[0]
    # a second run resumes: nothing is retrained or rescored, the same tables come out
    again = recipe("multi30k_rescoring.py", *args, "--workdir", str(work), "--seeds", "1", "2")
    assert again.returncode == 0 and "+ fairseq-" not in again.stdout
    assert markdown_tables(again.stdout) == markdown_tables(proc.stdout)
    # the same seed and command in a fresh workdir give the same numbers
    fresh = tmp_path / "fresh"
    repeat = recipe("multi30k_rescoring.py", *args, "--workdir", str(fresh), "--seeds", "1")
    assert repeat.returncode == 0, repeat.stderr[-3000:]
    repeated = json.loads((fresh / "seed1" / "results.json").read_text())
    assert repeated == results[1]
    # other training options in the same workdir are refused, not given the old models
    lm_before = (work / "seed1" / "lm" / "checkpoint_best.pt").stat().st_mtime_ns
    longer_lm = list(args)
    longer_lm[args.index("--lm-max-epoch") + 1] = "2"
    changed = recipe("multi30k_rescoring.py", *longer_lm, "--workdir", str(work), "--seeds", "1")
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
