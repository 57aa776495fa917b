"""Sentence scoring speed of a trained LM in fp32 and in bf16, side by side in one run.

    python scripts/benchmark_scoring.py \\
        --checkpoint ../shared/checkpoints/ptb-small/checkpoint_best.pt \\
        --data ../shared/checkpoints/ptb-small/data-bin --sentences 500 --threads 2

Scores the first ``--sentences`` lines of ``--text`` (PTB test by default) with the
rescorer's ``LMScorer`` (each sentence from ``</s>`` and a zero state, its closing ``</s>``
included), the model loaded once in fp32 and once in bf16 (``fairseq_awd.bf16_scoring``),
at batch 64 and at batch 1, and prints a markdown table: sentences/s, tokens/s (``</s>``
counted), milliseconds per sentence and the perplexity of each. A first batch warms each
setting up and is not timed; the settings alternate (fp32, bf16, fp32, ...) over
``--repeats`` rounds and the fastest round counts.

The n-gram row (a KenLM 5-gram with modified Kneser-Ney, ``--kenlm-model``) runs only where
the ``kenlm`` Python module is importable; otherwise one line says it was skipped and how to
build it.
"""

import argparse
import math
import os
import sys
import time
from typing import Dict, List

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
sys.path.insert(0, REPO)

KENLM_HOWTO = (
    "KenLM 5-gram: skipped ({why}). To add it: build KenLM from source (git clone "
    "https://github.com/kpu/kenlm; cmake and make give bin/lmplz and bin/build_binary), "
    "pip install https://github.com/kpu/kenlm/archive/master.zip for the kenlm module, "
    "then bin/lmplz -o 5 < ../shared/data/penn/train.txt > ptb.arpa and pass "
    "--kenlm-model ptb.arpa")


def read_sentences(path: str, count: int) -> List[str]:
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[:count] if count > 0 else lines


def time_scoring(scorer, sentences: List[str]) -> Dict[str, float]:
    """Seconds to score ``sentences`` (after one untimed warm-up batch), the tokens scored
    and their total log-probability."""
    scorer.score(sentences[:scorer.batch_size])
    start = time.perf_counter()
    scores = scorer.score(sentences)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": sum(s.num_tokens for s in scores),
            "logprob": sum(s.logprob for s in scores)}


def kenlm_row(args: argparse.Namespace, sentences: List[str]) -> str:
    try:
        import kenlm  # noqa: PLC0415  (optional)
    except ImportError:
        return KENLM_HOWTO.format(why="the kenlm Python module is not installed")
    if not args.kenlm_model:
        return KENLM_HOWTO.format(why="no --kenlm-model given")
    model = kenlm.Model(args.kenlm_model)
    start = time.perf_counter()
    log10 = sum(model.score(s, bos=True, eos=True) for s in sentences)
    seconds = time.perf_counter() - start
    tokens = sum(len(s.split()) + 1 for s in sentences)
    ppl = 10 ** (-log10 / tokens)
    return (f"| KenLM 5-gram | - | 1 | {len(sentences) / seconds:,.0f} | "
            f"{tokens / seconds:,.0f} | {1000 * seconds / len(sentences):.3f} | {ppl:.2f} |")


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=os.path.join(
        SHARED, "checkpoints", "ptb-small", "checkpoint_best.pt"),
        help="checkpoint of an AWD language model (default: ../shared's ptb-small)")
    parser.add_argument("--data", help="binarized data directory with the model's dict.txt "
                        "(default: data-bin next to the checkpoint)")
    parser.add_argument("--text", default=os.path.join(SHARED, "data", "penn", "test.txt"),
                        help="sentences, one a line, space-separated words (PTB test)")
    parser.add_argument("--sentences", type=int, default=0,
                        help="score the first N sentences (0: all)")
    parser.add_argument("--batch1-sentences", type=int, default=0,
                        help="sentences scored at batch 1 (0: as --sentences)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds over the settings; the fastest round of each counts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kenlm-model", help="KenLM 5-gram (ARPA or binary) for the n-gram "
                        "row; needs the kenlm Python module")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from fairseq_awd.rescoring.lm_scorer import LMScorer, load_lm

    data = args.data or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)),
                                     "data-bin")
    sentences = read_sentences(args.text, args.sentences)
    batch1 = sentences[:args.batch1_sentences] if args.batch1_sentences > 0 else sentences
    hubs = {dtype: load_lm(args.checkpoint, data, cpu=True, bf16=dtype == "bf16")
            for dtype in ("fp32", "bf16")}
    settings = [(dtype, batch) for batch in (64, 1) for dtype in ("fp32", "bf16")]
    best: Dict[tuple, Dict[str, float]] = {}
    for _ in range(args.repeats):
        for dtype, batch in settings:
            texts = sentences if batch > 1 else batch1
            result = time_scoring(LMScorer(hubs[dtype], batch), texts)
            result["sentences"] = len(texts)
            if (dtype, batch) not in best or result["seconds"] < best[dtype, batch]["seconds"]:
                best[dtype, batch] = result

    name = os.path.basename(os.path.dirname(os.path.abspath(args.checkpoint)))
    print(f"{len(sentences)} sentences of {args.text} ({len(batch1)} at batch 1), "
          f"{args.threads} threads, torch {torch.__version__}")
    print()
    print("| model | dtype | batch | sentences/s | tokens/s | ms/sentence | perplexity |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for dtype, batch in settings:
        r = best[dtype, batch]
        ppl = math.exp(-r["logprob"] / r["tokens"])
        print(f"| {name} | {dtype} | {batch} | {r['sentences'] / r['seconds']:,.1f} | "
              f"{r['tokens'] / r['seconds']:,.0f} | "
              f"{1000 * r['seconds'] / r['sentences']:.2f} | {ppl:.3f} |")
    for batch in (64, 1):
        speedup = best["fp32", batch]["seconds"] / best["bf16", batch]["seconds"] * (
            best["bf16", batch]["sentences"] / best["fp32", batch]["sentences"])
        print(f"\nbf16 / fp32 tokens/s at batch {batch}: {speedup:.2f}x", end="")
    print()
    print()
    print(kenlm_row(args, sentences))


if __name__ == "__main__":
    main()
