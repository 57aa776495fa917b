"""bf16 scoring (issue 29, items 2 and 4): every entry point that scores with a trained model
runs it in bf16 when asked, within 0.5% of its fp32 perplexity (or sentence log-probability),
and really in bf16.

A module fixture trains a tiny AWD-LSTM on real text. Every comparison records the dtypes of
the features and word vectors the output head multiplies (``OutputHead.output``) during the
run: a bf16 option that silently scores in fp32 fails here.
"""

import math
import re

import pytest
import torch
from fairseq_cli_helpers import (
    USER_DIR,
    assert_one_line_error,
    binarize,
    real_text_lines,
    run,
    run_module,
    train,
)

from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.models.awd_rnn import AWDRNNDecoder

pytestmark = pytest.mark.e2e  # trains a model and runs the commands

TOLERANCE = 0.005  # bf16 vs fp32, relative (issue 29, item 4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    lines = {"train": real_text_lines("train", 400), "valid": real_text_lines("valid", 60),
             "test": real_text_lines("test", 60)}
    return binarize(tmp_path_factory.mktemp("bf16_scoring") / "bin", lines)


def trained(data, tmp_path_factory, name, options):
    save_dir = tmp_path_factory.mktemp(name)
    train(data, save_dir, [*options, "--max-epoch", "2", "--no-epoch-checkpoints"])
    return save_dir / "checkpoint_best.pt"


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    return trained(data, tmp_path_factory, "lstm", [])


OTHER_MODELS = {  # the QRNN (its ForgetMult in bf16) and the adaptive softmax's head
    "qrnn": ["--arch", "awd_qrnn_lm"],
    "adaptive": ["--adaptive-softmax-cutoff", "300,1000"],
}


@pytest.fixture
def head_dtypes(monkeypatch):
    """The dtypes of the output head's inputs (features, word vectors) in every forward."""
    seen = set()
    original = AWDRNNDecoder.output_layer

    def output_layer(self, features):
        seen.add((features.dtype, self.word_vectors.dtype))
        return original(self, features)

    monkeypatch.setattr(AWDRNNDecoder, "output_layer", output_layer)
    return seen


FP32 = {(torch.float32, torch.float32)}
BF16 = {(torch.bfloat16, torch.bfloat16)}


def perplexity(proc) -> float:
    found = re.findall(r"Perplexity: ([0-9.]+)", proc.stdout + proc.stderr)
    assert found, (proc.stdout + proc.stderr)[-3000:]
    return float(found[-1])


def fp32_and_bf16(head_dtypes, command):
    """``command(extra)`` without and with ``--bf16``: the two perplexities, each checked to
    have run in its dtype."""
    ppl = {}
    for name, extra, dtypes in (("fp32", [], FP32), ("bf16", ["--bf16"], BF16)):
        head_dtypes.clear()
        proc = command(extra)
        assert head_dtypes == dtypes, (name, head_dtypes)
        ppl[name] = perplexity(proc)
    assert abs(ppl["bf16"] / ppl["fp32"] - 1) < TOLERANCE, ppl
    return ppl


def awd_eval(data, checkpoint, *extra, check=True):
    return run_module("fairseq_awd.evaluation.cli", [
        str(data), "--path", str(checkpoint), "--cpu", "--gen-subset", "test", *extra], check)


@pytest.mark.parametrize("model", ["lstm", *OTHER_MODELS])
def test_eval_lm_bf16_within_half_a_percent(data, checkpoint, head_dtypes, model,
                                            tmp_path_factory):
    """fairseq-eval-lm --bf16 --cpu: fairseq alone casts only for --fp16 (it scored fp32)."""
    if model != "lstm":
        checkpoint = trained(data, tmp_path_factory, model, OTHER_MODELS[model])
    fp32_and_bf16(head_dtypes, lambda extra: run("eval_lm", [
        str(data), "--path", str(checkpoint), "--user-dir", USER_DIR, "--task",
        "awd_language_modeling", "--cpu", "--gen-subset", "test", *extra]))


@pytest.mark.parametrize("cache", [False, True], ids=["plain", "cache"])
def test_awd_eval_bf16_within_half_a_percent(data, checkpoint, head_dtypes, cache):
    options = ["--cache-window", "20", "--cache-lambda", "0.2"] if cache else []
    fp32_and_bf16(head_dtypes, lambda extra: awd_eval(data, checkpoint, *options, *extra))


def test_dynamic_evaluation_refuses_bf16_in_one_line(data, checkpoint):
    proc = awd_eval(data, checkpoint, "--dynamic-eval", "--bf16", check=False)
    assert_one_line_error(proc, "--dynamic-eval", "--bf16", "resolution")


def sentences(n=40):
    return [line.strip() for line in real_text_lines("test", n) if line.strip()]


def test_rescorer_sentence_scores_within_half_a_percent(data, checkpoint, head_dtypes):
    """LMScorer (fairseq-awd-rescore's LM) in bf16: every sentence's log-probability within
    0.5% of fp32's, relative, and the total too."""
    from fairseq_awd.rescoring.lm_scorer import LMScorer, load_lm

    text = sentences()
    scores = {}
    for name, bf16, dtypes in (("fp32", False, FP32), ("bf16", True, BF16)):
        head_dtypes.clear()
        scorer = LMScorer(load_lm(str(checkpoint), str(data), cpu=True, bf16=bf16), 16)
        scores[name] = [s.logprob for s in scorer.score(text)]
        assert head_dtypes == dtypes, (name, head_dtypes)
    for fp32, bf16 in zip(scores["fp32"], scores["bf16"]):
        assert abs(bf16 / fp32 - 1) < TOLERANCE, (fp32, bf16)
    assert abs(sum(scores["bf16"]) / sum(scores["fp32"]) - 1) < TOLERANCE


def test_rescore_command_takes_bf16(data, checkpoint, tmp_path, head_dtypes):
    """fairseq-awd-rescore --bf16 reranks with a bf16 LM."""
    from fairseq_awd.rescoring import cli

    text = sentences(6)
    nbest = tmp_path / "test.nbest"
    nbest.write_text("".join(
        f"S-{i}\tx\nH-{i}\t-1.0\t{a}\nD-{i}\t-1.0\t{a}\nH-{i}\t-1.5\t{b}\nD-{i}\t-1.5\t{b}\n"
        for i, (a, b) in enumerate(zip(text[::2], text[1::2]))), encoding="utf-8")
    out = tmp_path / "out.txt"
    cli.main(["--nbest", str(nbest), "--output", str(out), "--lm", str(checkpoint),
              "--lm-data", str(data), "--lm-weight", "0.5", "--lm-tokenize", "none",
              "--detokenize", "none", "--max-unk-rate", "1", "--cpu", "--bf16"])
    assert head_dtypes == BF16
    assert len(out.read_text(encoding="utf-8").splitlines()) == len(text) // 2


def test_hub_scores_and_samples_in_bf16(data, checkpoint, head_dtypes):
    from fairseq_awd import from_pretrained

    hubs = {name: from_pretrained(str(checkpoint.parent), str(data), dtype=dtype)
            for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))}
    assert all(p.dtype == torch.bfloat16 for p in hubs["bf16"].models[0].parameters())
    text = sentences(10)
    head_dtypes.clear()
    totals = {name: sum(float(s["positional_scores"].sum()) for s in hub.score(text))
              for name, hub in hubs.items()}
    assert head_dtypes == FP32 | BF16
    assert abs(totals["bf16"] / totals["fp32"] - 1) < TOLERANCE, totals
    scores = hubs["bf16"].score(text[0])["positional_scores"]
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    head_dtypes.clear()
    torch.manual_seed(1)
    sample = hubs["bf16"].sample("the company said", sampling=True, sampling_topk=5,
                                 max_len_b=5)
    assert sample.startswith("the company said") and head_dtypes == BF16
    with pytest.raises(FairseqAWDError, match="float32.*bfloat16"):
        from_pretrained(str(checkpoint.parent), str(data), dtype=torch.float16)


def test_interactive_samples_in_bf16(data, checkpoint, head_dtypes):
    """fairseq-interactive --bf16 --cpu: sampling through fairseq's generator in bf16."""
    proc = run("interactive", [
        str(data), "--user-dir", USER_DIR, "--task", "awd_language_modeling", "--cpu", "--bf16",
        "--path", str(checkpoint), "--max-len-b", "6", "--sampling", "--sampling-topk", "5",
        "--beam", "1", "--seed", "3"], stdin="the company said\n")
    hypos = [line for line in proc.stdout.splitlines() if line.startswith("H-0")]
    assert len(hypos) == 1 and hypos[0].split("\t")[2].startswith("the company said")
    assert head_dtypes == BF16


def test_hub_keeps_fp32_for_a_checkpoint_trained_in_bf16(data, checkpoint, tmp_path):
    """A checkpoint saved by a --bf16 run (common.bf16 in its configuration) loads in fp32
    unless dtype asks for bf16: only the caller decides."""
    from fairseq_awd import from_pretrained

    state = torch.load(checkpoint, weights_only=False)
    state["cfg"]["common"]["bf16"] = True
    torch.save(state, tmp_path / "checkpoint_best.pt")
    hub = from_pretrained(str(tmp_path), str(data))
    assert all(p.dtype == torch.float32 for p in hub.models[0].parameters())
    assert not math.isnan(float(hub.score("the company")["positional_scores"].sum()))
