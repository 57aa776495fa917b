"""N-best reranking (``fairseq-awd-rescore``) on real fairseq-generate output.

A module fixture trains, in seconds, a tiny de->en transformer on 300 Multi30k task-1 pairs
(Moses-tokenized, subword-nmt BPE) and a tiny AWD-LSTM on task-2 *train* captions (never
task 2's test_2016, which holds the task-1 test references), then runs
``fairseq-generate --nbest 4 --beam 4`` on two slices of task-1 val.
"""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq_cli_helpers import (
    TINY_MODEL,
    TRAIN_DEFAULTS,
    USER_DIR,
    assert_one_line_error,
    binarize,
    one_thread_env,
    run,
)
from mt_fixtures import (
    HAS_MULTI30K,
    MULTI30K,
    SKIP_REASON,
    gz_lines,
    tokenized,
    train_tiny_transformer,
    train_translation_model,
)

pytestmark = pytest.mark.skipif(not HAS_MULTI30K, reason=SKIP_REASON)


def _generate(mt_bin: Path, checkpoint: Path, codes: Path, subset: str, out: Path) -> Path:
    proc = run("generate", [
        str(mt_bin), "--user-dir", USER_DIR, "--path", str(checkpoint), "--gen-subset", subset,
        "--beam", "4", "--nbest", "4", "--batch-size", "8", "--cpu", "--max-len-a", "1.2",
        "--max-len-b", "5", "--tokenizer", "moses", "--bpe", "subword_nmt",
        "--bpe-codes", str(codes), "--source-lang", "de", "--target-lang", "en",
    ])
    out.write_text(proc.stdout, encoding="utf-8")
    return out


def _split_nbest(path: Path, out: Path, first: int, stop: int) -> Path:
    """The lines of source ids ``first..stop-1`` of fairseq-generate output, renumbered from 0
    (one fairseq-generate run gives both the tuning and the test list)."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        tag, _, rest = line.partition("\t")
        if len(tag) > 2 and tag[1] == "-" and tag[2:].isdigit():
            if not first <= int(tag[2:]) < stop:
                continue
            line = f"{tag[:2]}{int(tag[2:]) - first}\t{rest}"
        kept.append(line)
    out.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return out


def _translation_model(root: Path):
    """The shared tiny de->en transformer, n-best of val 0-39, and the channel: the same
    transformer trained en->de on the same binarized pairs."""
    mt = train_translation_model(root)
    nbest = _generate(mt.data, mt.checkpoint, mt.codes, "test", root / "all.nbest")
    channel = train_tiny_transformer(mt.data, root / "channel", "en", "de")
    return nbest, mt.test_source, channel / "checkpoint_last.pt", mt.data


def _language_model(root: Path, task2: Path):
    """Tiny AWD-LSTM on 2,000 lowercased, Moses-tokenized task-2 *train* captions (task 2's
    test_2016 captions contain the task-1 test references: never train or tune on them)."""
    train = [line for i in range(1, 6) for line in gz_lines(task2 / f"train.{i}.en.gz", 0, 400)]
    valid = gz_lines(task2 / "val.1.en.gz", 0, 100)
    lm_data = binarize(root / "lm-bin", {
        "train": [line + "\n" for line in tokenized(train, "en", lowercase=True)],
        "valid": [line + "\n" for line in tokenized(valid, "en", lowercase=True)],
    })
    lm_dir = root / "lm"
    run("train", [str(lm_data), *TRAIN_DEFAULTS, *TINY_MODEL, "--save-dir", str(lm_dir),
                  "--batch-size", "20", "--bptt", "20", "--max-epoch", "3",
                  "--no-epoch-checkpoints", "--dropout", "0.1", "--dropouth", "0.1",
                  "--dropouti", "0.1", "--wdrop", "0.1"])
    return lm_dir / "checkpoint_best.pt", lm_data


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rescore")
    # One after the other, in this process: pytest-xdist already keeps both cores busy.
    both, german, channel, mt_data = _translation_model(root)
    lm_checkpoint, lm_data = _language_model(root, MULTI30K / "task2")
    refs = gz_lines(MULTI30K / "task1" / "val.en.gz", 0, 40)
    nbest, ref_files = {}, {}
    for split, first in (("valid", 0), ("test", 20)):  # val 0-19 to tune, 20-39 to test
        nbest[split] = _split_nbest(both, root / f"{split}.nbest", first, first + 20)
        ref_files[split] = root / f"{split}.ref"
        ref_files[split].write_text("".join(line + "\n" for line in refs[first:first + 20]),
                                    encoding="utf-8")
    return {"root": root, "nbest": nbest, "refs": ref_files, "lm": lm_checkpoint,
            "lm_data": lm_data, "german": german, "channel": channel, "mt_data": mt_data}


@pytest.fixture(scope="module")
def lm_scorer(setup):
    from fairseq_awd.rescoring.lm_scorer import LMScorer, load_lm

    return LMScorer(load_lm(str(setup["lm"]), str(setup["lm_data"]), cpu=True), batch_size=5)


def _lm_args(setup, *extra):
    return ["--lm", str(setup["lm"]), "--lm-data", str(setup["lm_data"]), "--lm-lowercase",
            "--cpu", *extra]


def _write_nbest(path: Path, entries) -> Path:
    """``entries``: (id, score, text) in file order -> H- and D- lines as fairseq prints."""
    lines = [f"{kind}-{i}\t{score}\t{text}\n" for i, score, text in entries for kind in "HD"]
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.mark.e2e
def test_parser_reads_real_generate_output(setup):
    from fairseq_awd.rescoring import parse_nbest

    path = setup["nbest"]["test"]
    lists = parse_nbest(str(path))
    assert [n.id for n in lists] == list(range(20))
    printed = [int(line.split("\t")[0][2:]) for line in path.read_text().splitlines()
               if line.startswith("S-")]
    assert printed != sorted(printed)  # fairseq-generate prints ids out of order
    h_lines = [line.split("\t") for line in path.read_text().splitlines()
               if line.startswith("H-")]
    assert sum(len(n.hypotheses) for n in lists) == len(h_lines)
    for nbest in lists:
        assert 1 <= len(nbest.hypotheses) <= 4 and nbest.source and nbest.target is not None
        scores = [h.score for h in nbest.hypotheses]
        assert scores == sorted(scores, reverse=True)
        for hyp in nbest.hypotheses:
            assert len(hyp.positional_scores) == len(hyp.h_text.split()) + 1
            assert hyp.d_text is not None and math.isfinite(hyp.score)
    first = lists[int(h_lines[0][0][2:])].hypotheses[0]
    assert first.score == float(h_lines[0][1]) and first.h_text == h_lines[0][2]


@pytest.mark.e2e
def test_bpe_removal_and_detokenization_round_trip(setup):
    from fairseq_awd.rescoring import parse_nbest
    from fairseq_awd.rescoring.text import TextPipeline, remove_bpe

    pipeline = TextPipeline("en", bpe_removal=True, detokenize=True)
    hyps = [h for n in parse_nbest(str(setup["nbest"]["test"])) for h in n.hypotheses]
    assert any("@@ " in h.h_text for h in hyps)
    for hyp in hyps:
        assert pipeline.output_text(hyp.h_text) == hyp.d_text  # what fairseq's decode gives
        assert pipeline.lm_words(hyp.d_text) == remove_bpe(hyp.h_text)  # re-tokenized
    assert remove_bpe("a dog@@ gy runs@@") == "a doggy runs"


@pytest.mark.e2e
def test_batched_scores_equal_hub_scores(setup, lm_scorer):
    sentences = ["a man in a blue shirt is standing on a ladder .", "a dog", "",
                 "two young children are playing in the sand near the water .", "people ."] * 2
    batched = lm_scorer.score(sentences, include_eos=False)
    with_eos = lm_scorer.score(sentences)
    hub, model = lm_scorer.hub, lm_scorer.model
    eos = hub.task.dictionary.eos()
    for sentence, no_eos, full in zip(sentences, batched, with_eos):
        words = lm_scorer.encode(sentence)
        expected = float(hub.score(sentence)["positional_scores"].sum()) if words.numel() else 0.0
        assert abs(no_eos.logprob - expected) < 1e-5
        with torch.no_grad():
            logits, _ = model(torch.cat([words.new([eos]), words]).unsqueeze(0))
            eos_lp = float(torch.log_softmax(logits[0, -1], -1)[eos])
        assert abs(full.logprob - (expected + eos_lp)) < 1e-5
        assert full.num_tokens == words.numel() + 1 and no_eos.num_unk == 0


@pytest.mark.e2e
def test_lm_weight_zero_reproduces_first_best(setup, tmp_path):
    from fairseq_awd.rescoring import parse_nbest
    from fairseq_awd.rescoring.cli import main

    out = tmp_path / "out.en"
    main(["--nbest", str(setup["nbest"]["test"]), "--output", str(out), "--lm-weight", "0",
          *_lm_args(setup)])
    lists = parse_nbest(str(setup["nbest"]["test"]))
    assert out.read_text().splitlines() == [n.hypotheses[0].d_text for n in lists]
    # written through a temporary file, yet with the mode a plain open() gives
    plain = tmp_path / "plain.en"
    plain.touch()
    assert out.stat().st_mode == plain.stat().st_mode


@pytest.mark.e2e
def test_tuned_rescoring_through_the_console_command(setup, tmp_path):
    out = tmp_path / "reranked.en"
    command = Path(sys.executable).parent / "fairseq-awd-rescore"
    proc = subprocess.run(
        [str(command), "--nbest", str(setup["nbest"]["test"]),
         "--ref", str(setup["refs"]["test"]), "--tune-nbest", str(setup["nbest"]["valid"]),
         "--tune-ref", str(setup["refs"]["valid"]), "--output", str(out),
         "--lm-weight-grid", "0:1:0.25", "--length-weight-grid=-0.5:0.5:0.5",
         *_lm_args(setup)],
        capture_output=True, text=True, env=one_thread_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tuned on" in proc.stdout and "BLEU translation 1-best" in proc.stdout
    assert "BLEU reranked" in proc.stdout
    assert len(out.read_text().splitlines()) == 20


@pytest.mark.e2e
def test_a_hypothesis_the_lm_prefers_moves_up(setup, lm_scorer, tmp_path):
    from fairseq_awd.rescoring.cli import main

    fluent = "A man is riding a bike on the street."
    scrambled = "street the bike a man on riding is A."
    lp = [s.logprob for s in lm_scorer.score([fluent.lower()[:-1] + " .",
                                              scrambled.lower()[:-1] + " ."])]
    assert lp[0] > lp[1] + 5  # the LM prefers the fluent sentence strongly
    nbest = _write_nbest(tmp_path / "nbest", [(0, -0.5, scrambled), (0, -0.6, fluent),
                                              (1, -0.4, fluent), (1, -0.9, scrambled)])
    for weight, expected in (("0", [scrambled, fluent]), ("1", [fluent, fluent])):
        out = tmp_path / f"out{weight}"
        main(["--nbest", str(nbest), "--output", str(out), "--lm-weight", weight,
              *_lm_args(setup)])
        assert out.read_text().splitlines() == expected


def test_rerank_and_tuning_on_features():
    from fairseq_awd.rescoring.rerank import Features, corpus_bleu, rerank, tune_weights

    refs = [["a dog runs .", "the cat sleeps ."]]
    hyps = [["dog a runs .", "a dog runs ."], ["the cat sleeps ."]]  # partial second list
    feats = Features.from_lists([[-1.0, -1.2], [-2.0]], lm=[[-20.0, -5.0], [-3.0]],
                                length=[[4, 4], [4]])
    assert rerank(feats, {"lm": 0.0, "length": 0.0}) == [0, 0]
    assert rerank(feats, {"lm": 0.1, "length": 0.0}) == [1, 0]
    grids = {"lm": [0.0, 0.1, 1.0], "length": [-0.1, 0.0, 0.1]}
    weights, bleu, objective = tune_weights(feats, hyps, refs, grids)
    assert weights == {"lm": 0.1, "length": 0.0}  # smallest |lambda|, then |mu|, among the best
    assert bleu == objective == pytest.approx(corpus_bleu(["a dog runs .", "the cat sleeps ."],
                                                          refs))
    with pytest.raises(ValueError, match="no feature"):
        feats.combined({"channel": 1.0})


def test_combined_score_is_the_weighted_sum_and_zero_weights_keep_the_first_best():
    from fairseq_awd.rescoring.rerank import Features, rerank

    tm = [[-0.5, -0.7, -0.9], [-1.0, -1.1]]
    lm = [[-3.0, -1.0, -2.0], [-0.5, -4.0]]
    channel = [[-2.0, -2.5, -0.1], [-1.0, -0.2]]
    feats = Features.from_lists(tm, lm=lm, channel=channel)
    score = feats.combined({"lm": 0.5, "channel": 2.0})
    assert score[0].tolist() == pytest.approx([-0.5 - 1.5 - 4.0, -0.7 - 0.5 - 5.0,
                                               -0.9 - 1.0 - 0.2])
    assert score[1, 2] == -np.inf  # no third hypothesis
    assert rerank(feats, {"lm": 0.0, "channel": 0.0}) == [0, 0]
    assert rerank(feats, {"lm": 0.5, "channel": 2.0}) == [2, 0]
    assert rerank(feats, {"lm": 0.0, "channel": 10.0}) == [2, 1]


def test_source_length_gap_against_hand_values():
    from fairseq_awd.rescoring.rerank import source_length_gap

    assert source_length_gap(10, 10, 1.1) == pytest.approx(-1.0)
    assert source_length_gap(12, 10, 1.1) == pytest.approx(-1.0)  # symmetric around 11
    assert source_length_gap(11, 10, 1.1) == pytest.approx(0.0)
    assert source_length_gap(0, 4, 0.5) == pytest.approx(-2.0)


def test_smoothed_tuning_picks_the_best_neighbourhood_mean():
    """Against a brute force: sacrebleu's corpus BLEU at every grid point, averaged over each
    point's neighbours by hand."""
    from fairseq_awd.rescoring.rerank import Features, corpus_bleu, rerank, tune_weights

    rng = np.random.default_rng(0)
    words = "a dog cat runs sleeps the on mat in park".split()
    refs = [[" ".join(rng.choice(words, 6)) for _ in range(30)]]
    hyps = [[" ".join(rng.choice(words, int(rng.integers(3, 9)))) for _ in range(4)]
            for _ in range(30)]
    feats = Features.from_lists(rng.normal(size=(30, 4)).tolist(),
                                lm=rng.normal(size=(30, 4)).tolist(),
                                length=[[len(h.split()) for h in row] for row in hyps])
    grids = {"lm": [0.0, 0.5, 1.0, 1.5, 2.0], "length": [-0.2, -0.1, 0.0, 0.1, 0.2]}
    raw = np.array([[corpus_bleu([row[j] for row, j in zip(hyps, rerank(
        feats, {"lm": a, "length": b}))], refs) for b in grids["length"]]
        for a in grids["lm"]])
    smooth = np.array([[raw[max(0, i - 1):i + 2, max(0, j - 1):j + 2].mean()
                        for j in range(5)] for i in range(5)])
    weights, bleu, objective = tune_weights(feats, hyps, refs, grids, smooth=True)
    i, j = grids["lm"].index(weights["lm"]), grids["length"].index(weights["length"])
    assert objective == pytest.approx(smooth.max()) == pytest.approx(smooth[i, j])
    assert bleu == pytest.approx(raw[i, j])
    unsmoothed, raw_best, _ = tune_weights(feats, hyps, refs, grids)
    assert raw_best == pytest.approx(raw.max())


@pytest.mark.e2e
def test_channel_score_equals_forced_decoding_with_the_reverse_model(setup):
    from fairseq_awd.rescoring import parse_nbest
    from fairseq_awd.rescoring.channel_scorer import ChannelScorer

    channel = ChannelScorer(str(setup["channel"]), str(setup["mt_data"]), cpu=True,
                            batch_size=3)
    assert channel.directions == ("en", "de")
    lists = parse_nbest(str(setup["nbest"]["test"]))[:4]
    pairs = [(n.source, h.h_text) for n in lists for h in n.hypotheses[:2]]
    scores = channel.score([x for x, _ in pairs], [y for _, y in pairs])
    model, src_dict, tgt_dict = channel.model, channel.task.src_dict, channel.task.tgt_dict
    eos = tgt_dict.eos()
    for (x, y), got in zip(pairs, scores):
        src = src_dict.encode_line(y, add_if_not_exist=False).long().unsqueeze(0)
        tgt = tgt_dict.encode_line(x, add_if_not_exist=False).long()
        prev = torch.cat([tgt.new([eos]), tgt[:-1]]).unsqueeze(0)
        with torch.no_grad():
            out = model(src, torch.tensor([src.numel()]), prev)
            lprobs = torch.log_softmax(out[0].double(), -1)[0]
        expected = float(lprobs.gather(1, tgt.unsqueeze(1)).sum())
        assert got.num_tokens == tgt.numel() == len(x.split()) + 1
        assert got.logprob == pytest.approx(expected, abs=1e-4)


@pytest.mark.e2e
def test_channel_scores_in_bf16_within_half_a_percent(setup, monkeypatch):
    """ChannelScorer(bf16=True) (fairseq-awd-rescore --bf16): the transformer runs in bf16
    (the dtype its output projection sees), every pair's log p(x | y) within 0.5% of fp32's."""
    from fairseq.models.transformer import TransformerDecoderBase

    from fairseq_awd.rescoring import parse_nbest
    from fairseq_awd.rescoring.channel_scorer import ChannelScorer

    seen = set()
    original = TransformerDecoderBase.output_layer
    monkeypatch.setattr(TransformerDecoderBase, "output_layer",
                        lambda self, x: seen.add(x.dtype) or original(self, x))
    lists = parse_nbest(str(setup["nbest"]["test"]))[:8]
    pairs = [(n.source, h.h_text) for n in lists for h in n.hypotheses[:2]]
    scores = {}
    for bf16, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        seen.clear()
        channel = ChannelScorer(str(setup["channel"]), str(setup["mt_data"]), cpu=True,
                                batch_size=4, bf16=bf16)
        scores[bf16] = [s.logprob for s in channel.score([x for x, _ in pairs],
                                                          [y for _, y in pairs])]
        assert seen == {dtype}
    for fp32, bf16 in zip(scores[False], scores[True]):
        assert abs(bf16 / fp32 - 1) < 0.005, (fp32, bf16)


@pytest.mark.e2e
def test_noisy_channel_reranking_through_the_command(setup, tmp_path):
    from fairseq_awd.rescoring import parse_nbest
    from fairseq_awd.rescoring.cli import main
    from fairseq_awd.rescoring.text import TextPipeline, remove_bpe

    channel = ["--channel", str(setup["channel"]), "--channel-data", str(setup["mt_data"]),
               "--channel-normalize", "--lm-normalize", "--length-feature", "source-gap"]
    out, weights = tmp_path / "out.en", tmp_path / "weights.json"
    main(["--nbest", str(setup["nbest"]["test"]), "--output", str(out), "--lm-weight", "0",
          "--length-weight", "0", "--channel-weight", "0", "--length-ratio", "1.2",
          *channel, *_lm_args(setup)])
    lists = parse_nbest(str(setup["nbest"]["test"]))
    assert out.read_text().splitlines() == [n.hypotheses[0].d_text for n in lists]

    main(["--nbest", str(setup["nbest"]["test"]), "--ref", str(setup["refs"]["test"]),
          "--tune-nbest", str(setup["nbest"]["valid"]), "--tune-ref", str(setup["refs"]["valid"]),
          "--output", str(out), "--weights-out", str(weights), "--lm-weight-grid", "0:1:0.5",
          "--length-weight-grid", "0:0.2:0.1", "--channel-weight-grid", "0:1:0.5",
          "--smooth-tuning", *channel, *_lm_args(setup)])
    record = json.loads(weights.read_text())
    assert set(record["weights"]) == {"lm", "length", "channel"}
    assert record["weights"]["channel"] in (0.0, 0.5, 1.0)
    # the ratio is measured on the tuning set: reference words per source word
    dev = parse_nbest(str(setup["nbest"]["valid"]))
    pipeline = TextPipeline("en")
    ref_words = sum(len(pipeline.lm_words(r).split())
                    for r in setup["refs"]["valid"].read_text().splitlines())
    src_words = sum(len(remove_bpe(n.source).split()) for n in dev)
    assert record["length_ratio"] == pytest.approx(ref_words / src_words)
    assert record["length_feature"] == "source-gap"
    assert record["tune_bleu"] >= record["tune_bleu_before"] - 1e-9


@pytest.mark.e2e
@pytest.mark.parametrize("options, message", [
    (["--channel", "x.pt"], "--channel and --channel-data go together"),
    (["--channel-weight", "1"], "--channel-weight/--channel-normalize need --channel"),
    (["--length-feature", "source-gap"], "needs --length-ratio"),
    (["--length-ratio", "1.1"], "with --length-feature source-gap"),
])
def test_bad_channel_and_length_options_are_refused(setup, tmp_path, options, message):
    from fairseq_awd import FairseqAWDError
    from fairseq_awd.rescoring.cli import main

    with pytest.raises(FairseqAWDError, match=re.escape(message)):
        main(["--nbest", str(setup["nbest"]["test"]), "--output", str(tmp_path / "out"),
              "--lm-weight", "1", *options, *_lm_args(setup)])
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_lists_without_source_lines_are_refused_before_scoring(setup, tmp_path, monkeypatch):
    from fairseq_awd import FairseqAWDError
    from fairseq_awd.rescoring import cli

    nbest = _write_nbest(tmp_path / "x.nbest", [(0, -0.5, "a dog runs .")])  # no S- line
    monkeypatch.setattr(cli, "load_lm", lambda *a, **k: pytest.fail("the LM was loaded"))
    with pytest.raises(FairseqAWDError, match=r"x\.nbest: source id 0 has no S- line"):
        cli.main(["--nbest", str(nbest), "--output", str(tmp_path / "out"), "--lm-weight", "0",
                  "--length-feature", "source-gap", "--length-ratio", "1.1", *_lm_args(setup)])
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_wrong_channel_tokens_are_refused(setup, tmp_path):
    """Sources the channel's dictionary does not know (here: made-up words) are refused."""
    from fairseq_awd import FairseqAWDError
    from fairseq_awd.rescoring.cli import main

    nbest = _write_nbest(tmp_path / "x.nbest", [(0, -0.5, "a man is riding a bike .")])
    nbest.write_text("S-0\tqqqx zzzq xxqz yyqx zzqy\n" + nbest.read_text())
    with pytest.raises(FairseqAWDError, match=r"--channel: \d+ of 12 tokens .* are <unk> in the "
                       r"channel model's dictionaries \(en->de"):
        main(["--nbest", str(nbest), "--output", str(tmp_path / "out"), "--lm-weight", "0",
              "--channel", str(setup["channel"]), "--channel-data", str(setup["mt_data"]),
              *_lm_args(setup)])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    ("", "no S-/T-/H-/D-/P- lines"),
    ("H-0\t-0.5\n", ":1: H- line: expected H-ID<tab>SCORE<tab>TEXT"),
    ("H-0\ta dog\n", ":1: H- line: expected H-ID<tab>SCORE<tab>TEXT"),
    ("S-0\tx\nH-0\tabc\ta dog\n", ":2: H- line: score 'abc' is not a number"),
    ("H-0\t-0.5\ta dog\nP-0\t-0.1 -0.2\n", ":2: P- line has 2 scores but its H- line"),
    ("H-0\t-0.5\ta dog\nP-0\t-0.1 x -0.3\n", ":2: P- line: score 'x' is not a number"),
    ("D-0\t-0.5\ta dog\n", ":1: D- line for id 0 without its H- line"),
    ("S-0\tx\nH-0\t-1\ta\nS-1\ty\n", ":3: source id 1 has no hypotheses"),
    ("H-0\t-1\ta\nH-2\t-1\tb\n", "1 source ids have no hypotheses: 1"),
    ("H-x\t-1\ta\n", ":1: H- line: id 'x' is not a number"),
    ("H-0\t-1\ta dog\nD-0\t-1\ta d", ":2: the file ends inside this line (no final newline)"),
    ("H-0\t-1\ta\nD-0\t-1\ta\nH-1\t-1\tb\n", ":3: H- line without the D- line that the other"),
])
def test_malformed_lists_are_refused(tmp_path, content, message):
    from fairseq_awd import FairseqAWDError
    from fairseq_awd.rescoring import parse_nbest

    path = tmp_path / "bad.nbest"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(FairseqAWDError) as err:
        parse_nbest(str(path))
    assert message in str(err.value)


@pytest.mark.e2e
def test_partial_lists_are_reranked(setup, tmp_path):
    from fairseq_awd.rescoring.cli import main

    lines = setup["nbest"]["test"].read_text().splitlines()
    kept, seen = [], {}
    for line in lines:  # keep one hypothesis of even ids, all of the odd ones
        if line[:2] in ("H-", "D-", "P-"):
            sid = int(line.split("\t")[0][2:])
            seen[sid] = seen.get(sid, 0) + (line.startswith("H-"))
            if sid % 2 == 0 and seen[sid] > 1:
                continue
        kept.append(line)
    partial = tmp_path / "partial.nbest"
    partial.write_text("\n".join(kept) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    main(["--nbest", str(partial), "--output", str(out), "--lm-weight", "0.5",
          "--length-weight", "0.1", *_lm_args(setup)])
    assert len(out.read_text().splitlines()) == 20


@pytest.mark.e2e
def test_bad_input_through_the_command_line_writes_nothing(setup, tmp_path):
    bad = tmp_path / "bad.nbest"
    bad.write_text("S-0\tein Hund\nH-0\t-0.5\n", encoding="utf-8")
    out = tmp_path / "out.en"
    proc = subprocess.run(
        [sys.executable, "-m", "fairseq_awd.rescoring.cli", "--nbest", str(bad), "--output",
         str(out), "--lm-weight", "1", *_lm_args(setup)],
        capture_output=True, text=True, env=one_thread_env(), timeout=300)
    assert_one_line_error(proc, f"{bad}:2: H- line: expected")
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]


@pytest.mark.e2e
def test_vocabulary_mismatch_is_refused(setup, tmp_path):
    from fairseq_awd import FairseqAWDError
    from fairseq_awd.rescoring.cli import main

    german = _write_nbest(tmp_path / "de.nbest",
                          [(i, -0.5, line) for i, line in enumerate(setup["german"][:5])])
    out = tmp_path / "out"
    with pytest.raises(FairseqAWDError, match=r"vocabulary mismatch: \d+ of \d+ LM tokens "
                       r".*--max-unk-rate is 0.2.*--lm-lowercase"):
        main(["--nbest", str(german), "--output", str(out), "--lm-weight", "1",
              *_lm_args(setup)])
    # cased text for a lowercased LM: few unknown words, refused only with --strict
    cased = _write_nbest(tmp_path / "cased.nbest", [(0, -0.5, "A Dog runs.")])
    args = ["--nbest", str(cased), "--output", str(out), "--lm-weight", "1",
            "--lm", str(setup["lm"]), "--lm-data", str(setup["lm_data"]), "--cpu"]
    with pytest.raises(FairseqAWDError, match="--strict allows none.*'A', 'Dog'"):
        main([*args, "--strict"])
    assert not out.exists()


@pytest.mark.e2e
def test_lm_with_another_dictionary_is_refused(setup, tmp_path):
    from fairseq_awd import FairseqAWDError
    from fairseq_awd.rescoring.lm_scorer import load_lm

    lines = (setup["lm_data"] / "dict.txt").read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    other = tmp_path / "other-data"
    other.mkdir()
    (other / "dict.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(FairseqAWDError, match="different dictionary"):
        load_lm(str(setup["lm"]), str(other), cpu=True)


def test_paired_bootstrap_and_length_ratio():
    from sacrebleu.metrics import BLEU

    from fairseq_awd.rescoring.rerank import length_ratio, paired_bootstrap

    rng = np.random.default_rng(0)
    words = "a dog cat runs sleeps the on mat in park".split()
    refs = [[" ".join(rng.choice(words, 8)) for _ in range(200)]]
    base = [" ".join(rng.choice(words, 8)) for _ in refs[0]]
    good = [r if i % 2 else b for i, (r, b) in enumerate(zip(refs[0], base))]
    near = [refs[0][0], *base[1:]]  # one sentence of 200 fixed: no significant gain
    p = paired_bootstrap(base, {"good": good, "same": base, "near": near}, refs)
    assert p["good"] < 0.01 and p["near"] > 0.05 and p["same"] == 1.0
    short = [" ".join(h.split()[:6]) for h in base]
    score = BLEU().corpus_score(short, refs)
    assert length_ratio(short, refs) == pytest.approx(0.75) == score.sys_len / score.ref_len
