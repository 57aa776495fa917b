"""Shallow fusion of a translation model with an AWD-LSTM LM in ``fairseq-generate``.

A module fixture trains the tiny de->en transformer of ``mt_fixtures`` and a tiny AWD-LSTM
on 1,000 other task-1 *train* English sentences, BPE'd with the translation model's codes and
binarized with ``--srcdict`` = its target dictionary, which is also put as ``dict.txt`` in
the translation data directory (where fairseq-generate loads the ``--lm-path`` LM's
dictionary from). The plain route is ``--task translation --lm-path``; the incremental one
``--task translation_lm_fusion``.
"""

import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
from fairseq_cli_helpers import (
    TINY_MODEL,
    TRAIN_DEFAULTS,
    USER_DIR,
    assert_one_line_error,
    binarize,
    run,
)
from mt_fixtures import (
    HAS_MULTI30K,
    MULTI30K,
    SKIP_REASON,
    apply_bpe,
    gz_lines,
    tokenized,
    train_translation_model,
)

pytestmark = pytest.mark.e2e  # runs fairseq's or the plugin's commands

pytestmark = pytest.mark.skipif(not HAS_MULTI30K, reason=SKIP_REASON)

Hypotheses = Dict[int, List[Tuple[float, str]]]
TASKS = ("translation", "translation_lm_fusion")  # plain and incremental fusion


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion")
    mt = train_translation_model(root)
    task1 = MULTI30K / "task1"
    lines = {split: apply_bpe(mt.codes, tokenized(gz_lines(task1 / "train.en.gz", a, b), "en"))
             for split, (a, b) in {"train": (300, 1300), "valid": (1300, 1400)}.items()}
    lm_data = binarize(root / "lm-bin", {s: [x + "\n" for x in v] for s, v in lines.items()},
                       srcdict=mt.data / "dict.en.txt")
    lm_dir = root / "lm"
    run("train", [str(lm_data), *TRAIN_DEFAULTS, *TINY_MODEL, "--save-dir", str(lm_dir),
                  "--batch-size", "20", "--bptt", "20", "--max-epoch", "2",
                  "--no-epoch-checkpoints", "--dropout", "0.1", "--dropouth", "0.1",
                  "--dropouti", "0.1", "--wdrop", "0.1"])
    shutil.copy(mt.data / "dict.en.txt", mt.data / "dict.txt")  # the --lm-path LM's dict
    unfused = _hypotheses(_generate(mt.data, mt.checkpoint).stdout)
    return {"root": root, "mt": mt, "lm": lm_dir / "checkpoint_best.pt", "unfused": unfused}


def _generate(data: Path, checkpoint: Path, *extra: str, check: bool = True):
    return run("generate", [
        str(data), "--user-dir", USER_DIR, "--path", str(checkpoint), "--gen-subset", "test",
        "--beam", "4", "--nbest", "2", "--batch-size", "8", "--cpu", "--max-len-a", "1.2",
        "--max-len-b", "5", "--source-lang", "de", "--target-lang", "en", *extra,
    ], check=check)


def _generate_both(data: Path, checkpoint: Path, *extra: str, check: bool = True):
    """The same run with ``--task translation`` and ``--task translation_lm_fusion``."""
    return [_generate(data, checkpoint, "--task", task, *extra, check=check) for task in TASKS]


def _hypotheses(stdout: str) -> Hypotheses:
    """``{source id: [(score, BPE'd hypothesis), ...]}`` from the H- lines."""
    out: Hypotheses = {}
    for line in stdout.splitlines():
        if line.startswith("H-"):
            tag, score, text = line.split("\t")
            out.setdefault(int(tag[2:]), []).append((float(score), text))
    return out


def _assert_same(a: Hypotheses, b: Hypotheses, atol: float) -> None:
    assert a.keys() == b.keys() and len(a) == 40
    for sid in a:
        assert [t for _, t in a[sid]] == [t for _, t in b[sid]], sid
        assert [s for s, _ in a[sid]] == pytest.approx([s for s, _ in b[sid]], abs=atol), sid


def test_weight_zero_reproduces_beam_search(setup):
    mt = setup["mt"]
    for proc in _generate_both(mt.data, mt.checkpoint, "--lm-path", str(setup["lm"]),
                               "--lm-weight", "0"):
        _assert_same(_hypotheses(proc.stdout), setup["unfused"], atol=0.0)


def test_incremental_fusion_equals_plain_fusion(setup):
    mt = setup["mt"]
    plain, incremental = (_hypotheses(proc.stdout) for proc in _generate_both(
        mt.data, mt.checkpoint, "--lm-path", str(setup["lm"]), "--lm-weight", "0.5"))
    _assert_same(incremental, plain, atol=1e-4)
    unfused = setup["unfused"]
    assert any(unfused[sid][0] != plain[sid][0] for sid in plain)  # the LM does count


def test_bf16_fusion_runs_both_models_in_bf16(setup, monkeypatch):
    """fairseq-generate --bf16 --cpu --task translation_lm_fusion: the translation model and
    the LM run in bf16 (the dtypes their output layers see); the fused hypotheses' scores
    stay close to fp32's (the beam's sums are float32)."""
    from fairseq.models.transformer import TransformerDecoderBase

    from fairseq_awd.models.awd_rnn import AWDRNNDecoder

    seen = set()
    for cls in (TransformerDecoderBase, AWDRNNDecoder):
        original = cls.output_layer
        monkeypatch.setattr(cls, "output_layer", lambda self, x, original=original, cls=cls: (
            seen.add((cls.__name__, x.dtype)) or original(self, x)))
    mt, fused = setup["mt"], {}
    for name, extra in (("fp32", []), ("bf16", ["--bf16"])):
        seen.clear()
        fused[name] = _hypotheses(_generate(
            mt.data, mt.checkpoint, "--task", "translation_lm_fusion", "--lm-path",
            str(setup["lm"]), "--lm-weight", "0.3", *extra).stdout)
        dtype = torch.bfloat16 if name == "bf16" else torch.float32
        assert seen == {("TransformerDecoderBase", dtype), ("AWDRNNDecoder", dtype)}, seen
    # These tiny models' beams hold near ties (scores about -4.3 nats per token, within 1% of
    # each other), which bf16's rounding flips: 26 of 40 top hypotheses were identical with
    # the current fixture LM, every top score within 6% of fp32's.
    same = [sid for sid in fused["fp32"] if fused["fp32"][sid][0][1] == fused["bf16"][sid][0][1]]
    assert len(same) >= 0.6 * len(fused["fp32"])
    for sid in same:
        assert fused["bf16"][sid][0][0] == pytest.approx(fused["fp32"][sid][0][0], rel=0.02)
    for sid in fused["fp32"]:
        assert fused["bf16"][sid][0][0] == pytest.approx(fused["fp32"][sid][0][0], rel=0.06)
    seen.clear()  # fairseq's plain route: only the AWD LM casts itself (prepare_for_inference_)
    _generate(mt.data, mt.checkpoint, "--task", "translation", "--lm-path", str(setup["lm"]),
              "--lm-weight", "0.3", "--bf16")
    assert seen == {("TransformerDecoderBase", torch.float32), ("AWDRNNDecoder", torch.bfloat16)}


def test_lm_of_another_dictionary_is_refused(setup, tmp_path):
    """An LM whose dictionary differs from DATA/dict.txt is refused on loading (both routes);
    one that matches DATA/dict.txt while the target dictionary differs is refused by the
    incremental task (the plain route cannot see it)."""
    mt = setup["mt"]
    data = tmp_path / "data"
    shutil.copytree(mt.data, data)
    symbols = (data / "dict.txt").read_text(encoding="utf-8").splitlines()
    swapped = [symbols[1], symbols[0], *symbols[2:]]
    (data / "dict.txt").write_text("\n".join(swapped) + "\n", encoding="utf-8")
    lm = ["--lm-path", str(setup["lm"]), "--lm-weight", "0.5"]
    for proc in _generate_both(data, mt.checkpoint, *lm, check=False):
        error = assert_one_line_error(proc)
        assert "different dictionary" in error and "--srcdict" in error
    shutil.copy(mt.data / "dict.txt", data / "dict.txt")  # the LM's dictionary again ...
    for lang in ("de", "en"):  # ... but not the translation model's (joined) one
        (data / f"dict.{lang}.txt").write_text("\n".join(swapped) + "\n", encoding="utf-8")
    proc = _generate(data, mt.checkpoint, "--task", "translation_lm_fusion", *lm, check=False)
    error = assert_one_line_error(proc)
    n = len(symbols) + 4  # fairseq's special symbols
    assert f"dictionary ({n} types) differs from the target dictionary" in error
    assert f"{data}/dict.en.txt ({n} types" in error and "--srcdict" in error


def test_mixture_of_softmaxes_lm_fuses_and_rescores(setup):
    """An LM with a mixture of softmaxes: incremental fusion equals plain fusion, and the
    rescorer's batched sentence scores equal the hub's (both through its exact
    ``get_normalized_probs``)."""
    import torch

    from fairseq_awd.rescoring.lm_scorer import LMScorer, load_lm

    mt, root = setup["mt"], setup["root"]
    lm_dir = root / "lm-mos"
    run("train", [str(root / "lm-bin"), *TRAIN_DEFAULTS, *TINY_MODEL, "--save-dir", str(lm_dir),
                  "--mos-components", "3", "--decoder-out-embed-dim", "16", "--batch-size",
                  "20", "--bptt", "20", "--max-epoch", "1", "--no-epoch-checkpoints"])
    checkpoint = lm_dir / "checkpoint_best.pt"
    plain, incremental = (_hypotheses(proc.stdout) for proc in _generate_both(
        mt.data, mt.checkpoint, "--lm-path", str(checkpoint), "--lm-weight", "0.5"))
    _assert_same(incremental, plain, atol=1e-4)
    hub = load_lm(str(checkpoint), str(root / "lm-bin"), cpu=True)
    assert hub.models[0].decoder.head.mixture is not None
    sentences = [text for hyps in plain.values() for _, text in hyps][:12]
    scores = LMScorer(hub, batch_size=5).score(sentences, include_eos=False)
    with torch.no_grad():
        for sentence, score in zip(sentences, scores):
            expected = float(hub.score(sentence)["positional_scores"].sum())
            assert abs(score.logprob - expected) < 1e-4, sentence


@pytest.fixture(scope="module")
def backward_lm(setup):
    """The fixture's LM saved as if trained with ``--reverse-tokens`` (the saved task option
    is what tells a backward LM)."""
    import torch

    state = torch.load(setup["lm"], map_location="cpu", weights_only=False)
    state["cfg"]["task"]["reverse_tokens"] = True
    path = setup["root"] / "backward" / "checkpoint_best.pt"
    path.parent.mkdir()
    torch.save(state, path)
    return path


def test_non_finite_lm_weight_is_refused_in_one_line(setup):
    mt = setup["mt"]
    proc = _generate(mt.data, mt.checkpoint, "--task", "translation_lm_fusion", "--lm-path",
                     str(setup["lm"]), "--lm-weight", "nan", check=False)
    assert proc.returncode == 1
    assert_one_line_error(proc, "--lm-weight is nan, not a finite number", "--lm-weight 1")


def test_backward_lm_is_refused_by_fusion_as_by_the_rescorer(setup, backward_lm):
    from fairseq_awd import FairseqAWDError
    from fairseq_awd.rescoring.lm_scorer import load_lm

    mt = setup["mt"]
    proc = _generate(mt.data, mt.checkpoint, "--task", "translation_lm_fusion", "--lm-path",
                     str(backward_lm), "--lm-weight", "0.5", check=False)
    assert proc.returncode == 1
    fusion = assert_one_line_error(proc, f"--lm-path {backward_lm} is a backward LM",
                                   "need a forward LM")
    with pytest.raises(FairseqAWDError) as rescorer:
        load_lm(str(backward_lm), str(setup["root"] / "lm-bin"), cpu=True)
    assert fusion == f"fairseq_awd: error: {rescorer.value}".replace("--lm ", "--lm-path ")
