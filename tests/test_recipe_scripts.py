"""The end-to-end Python recipes run on real data in a reduced (--limit) setting, print
their tables, resume without redoing work, and stop with one line on bad data paths."""

import json
import re
import statistics
import subprocess
import sys

import pytest
from fairseq_cli_helpers import REPO, SHARED_DATA, assert_one_line_error, one_thread_env
from mt_fixtures import HAS_MULTI30K, MULTI30K, SKIP_REASON

HAS_TREC = (SHARED_DATA / "trec" / "train_5500.label").exists() and (
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


@pytest.mark.skipif(not HAS_TREC, reason="needs ../shared/data/trec and wikitext-2")
def test_trec_recipe_prints_the_three_error_rates(tmp_path):
    work = tmp_path / "work"
    proc = recipe("trec_transfer.py", "--workdir", str(work), "--limit", "400",
                  "--seeds", "1", "--pretrain-epochs", "1", "--finetune-updates", "4",
                  "--classifier-epochs", "2", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows(proc.stdout)
    variants = ("scratch", "pretrained", "ulmfit", "ulmfit_all_layers")
    assert set(rows) == {"classifier", *variants}, proc.stdout
    results = json.loads((work / "results.json").read_text())
    for variant in variants:
        error = results[variant]["1"]
        assert 0.0 <= error <= 100.0 and rows[variant][0] == f"{error:.1f}"
    # the held-out validation questions come from train_5500, never from the test file
    source = (SHARED_DATA / "trec" / "train_5500.label").read_text().splitlines()[:400]
    valid = (work / "data" / "text" / "valid.question").read_text().splitlines()
    assert len(valid) == 80 and set(valid) <= {line.split(" ", 1)[1] for line in source}
    # the classifiers trained from an LM logged the LM's encoder; unfreezing ran
    log = (work / "seed1" / "ulmfit.log").read_text()
    assert "encoder from --pretrained-lm" in log and "gradual unfreezing: epoch 2" in log


def test_trec_recipe_names_a_malformed_label_file(tmp_path):
    trec = tmp_path / "trec"
    trec.mkdir()
    (trec / "train_5500.label").write_text("DESC:manner How did it go ?\nno label here\n")
    (trec / "TREC_10.label").write_text("NUM:dist How far ?\n")
    proc = recipe("trec_transfer.py", "--trec", str(trec), "--workdir", str(tmp_path / "w"))
    assert_one_line_error(proc, "train_5500.label:2", "COARSE:fine")
    assert not (tmp_path / "w" / "data").exists()
