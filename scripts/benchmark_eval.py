"""Evaluation time of plain scoring, the cache pointer and dynamic evaluation, side by side.

    python scripts/benchmark_eval.py --data DATA --path CKPT --split test --repeats 2 \\
        --threads 2 --modes plain cache dynamic

Runs ``fairseq-awd-eval`` once per mode and repeat, alternating the modes (plain, cache,
dynamic, plain, cache, ...) so that a noisy machine affects them alike, and prints a table:
seconds of scoring (fairseq's "Evaluated N tokens in S s"), tokens/s, the ratio to plain,
and the perplexity. Dynamic evaluation's gradient-statistics pass over training data is
timed separately (it runs once per model, not per split).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
from typing import Dict, List

MODES = {
    "plain": [],
    "cache": ["--cache-window", "500", "--cache-theta", "1.0", "--cache-lambda", "0.1"],
    "dynamic": ["--dynamic-eval"],
}


def run_mode(args: argparse.Namespace, mode: str) -> Dict[str, float]:
    extra = list(MODES[mode])
    if mode == "dynamic":
        extra += ["--dynamic-stats-max-batches", str(args.dynamic_stats_max_batches)]
    command = [sys.executable, "-m", "fairseq_awd.evaluation.cli", args.data, "--path",
               args.path, "--gen-subset", args.split, "--cpu", "--valid-batch-size", "1",
               *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"error: fairseq-awd-eval ({mode}) failed:\n{output[-3000:]}")
    evaluated = re.findall(r"Evaluated ([0-9,]+) tokens in ([0-9.]+)s", output)[-1]
    stats = re.findall(r"gradient statistics from \d+ windows of '\w+' in ([0-9.]+)s", output)
    return {
        "tokens": int(evaluated[0].replace(",", "")),
        "seconds": float(evaluated[1]),
        "statistics": float(stats[0]) if stats else 0.0,
        "ppl": float(re.findall(r"Perplexity: ([0-9.]+)", output)[-1]),
    }


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="binarized data (dict.txt, splits)")
    parser.add_argument("--path", required=True, help="checkpoint of an AWD language model")
    parser.add_argument("--split", default="test")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dynamic-stats-max-batches", type=int, default=100)
    args = parser.parse_args(argv)

    runs: Dict[str, List[Dict[str, float]]] = {mode: [] for mode in args.modes}
    for repeat in range(args.repeats):
        for mode in args.modes:
            runs[mode].append(run_mode(args, mode))
            print(f"repeat {repeat + 1} {mode}: {runs[mode][-1]['seconds']:.1f} s", flush=True)
    plain = statistics.median(r["seconds"] for r in runs["plain"]) if "plain" in runs else None
    print(f"\n{args.split}, {args.threads} threads, median of {args.repeats}:\n")
    print("| mode | scoring s | tokens/s | x plain | statistics s | perplexity |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for mode, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        ratio = f"{seconds / plain:.2f}" if plain else "-"
        stats = statistics.median(r["statistics"] for r in results)
        print(f"| {mode} | {seconds:.1f} | {results[0]['tokens'] / seconds:.0f} | {ratio} | "
              f"{stats:.1f} | {results[0]['ppl']:.2f} |")


if __name__ == "__main__":
    main()
