"""The Multi30k recipe runs on real data in a reduced (--limit) setting, prints its tables,
resumes without redoing work, and stops with one line on a bad data path."""

import json
import statistics

import pytest
from fairseq_cli_helpers import assert_one_line_error, recipe, table_rows
from mt_fixtures import HAS_MULTI30K, MULTI30K, SKIP_REASON

pytestmark = pytest.mark.e2e  # runs fairseq's or the plugin's commands


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
    # weights are tuned on val alone (written per reranker), in the run that reranks the
    # first test set, and the other test sets are reranked with them fixed
    commands = [line for line in proc.stdout.splitlines() if line.startswith("+ fairseq-awd-")]
    assert len(commands) == 2 * 4 * 3  # seeds x rerankers x test sets
    assert sum("--tune-nbest" in command.split() for command in commands) == 2 * 4
    for command in commands:
        options = command.split()
        if "--tune-nbest" in options:
            assert options[options.index("--tune-nbest") + 1].endswith("/valid.nbest")
            assert options[options.index("--nbest") + 1].endswith("/test.nbest")
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
