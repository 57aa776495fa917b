"""Shallow-fusion speed: fairseq's plain ``--lm-path`` route against ``translation_lm_fusion``.

Usage:
    python scripts/benchmark_fusion.py --data DATA --path MT.pt --lm-path LM.pt \
        [--gen-subset test] [--beam 5] [--lm-weight 0.3] [--repeats 2] [-- EXTRA ARGS]

Runs ``fairseq-generate DATA --path MT.pt --lm-path LM.pt`` on the CPU with
``--task translation`` (the LM re-reads the whole prefix at every step: O(T^2) per
hypothesis) and with ``--task translation_lm_fusion`` (the LM carries its state: O(T)),
interleaved, ``--repeats`` times each, and prints a markdown table of the best run of each:
sentences/s and tokens/s as fairseq-generate reports them (generation only, model loading
excluded), and the speed-up. It also checks that both routes print the same hypotheses.
DATA must hold ``dict.txt`` = the target dictionary (where fairseq loads the LM's from).
Arguments after ``--`` go to both fairseq-generate runs (e.g. ``--max-len-b 50``).
"""

import argparse
import os
import re
import subprocess
import sys
from typing import Dict, List, Tuple

ROUTES = {"plain (--task translation)": "translation",
          "incremental (--task translation_lm_fusion)": "translation_lm_fusion"}
TRANSLATED = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in [\d.]+s "
                        r"\(([\d.]+) sentences/s")


def generate(args: argparse.Namespace, task: str) -> Tuple[Dict[str, float], List[str]]:
    """One fairseq-generate run: its reported numbers and its H- lines."""
    user_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fairseq_awd")
    cmd = [sys.executable, "-m", "fairseq_cli.generate", args.data, "--user-dir", user_dir,
           "--task", task, "--path", args.path, "--lm-path", args.lm_path, "--lm-weight",
           str(args.lm_weight), "--gen-subset", args.gen_subset, "--beam", str(args.beam),
           "--batch-size", str(args.batch_size), "--cpu", *args.extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"fairseq-generate --task {task} failed:\n{proc.stderr[-3000:]}")
    match = TRANSLATED.search(proc.stdout + proc.stderr)
    if match is None:
        sys.exit(f"no 'Translated ...' line in the output of --task {task}")
    sentences, tokens, per_second = (float(g.replace(",", "")) for g in match.groups())
    seconds = sentences / per_second
    hypotheses = sorted(line.split("\t")[0] + "\t" + line.split("\t")[2]
                        for line in proc.stdout.splitlines() if line.startswith("H-"))
    return {"sentences": sentences, "tokens": tokens, "seconds": seconds}, hypotheses


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--path", required=True, help="translation model checkpoint")
    parser.add_argument("--lm-path", required=True, help="AWD LM checkpoint (target dict)")
    parser.add_argument("--gen-subset", default="test")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lm-weight", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS")
    parser.add_argument("extra", nargs="*", help="after --: more fairseq-generate arguments")
    args = parser.parse_args(argv)

    best: Dict[str, Dict[str, float]] = {}
    outputs: Dict[str, List[str]] = {}
    for _ in range(args.repeats):
        for name, task in ROUTES.items():
            numbers, outputs[name] = generate(args, task)
            if name not in best or numbers["seconds"] < best[name]["seconds"]:
                best[name] = numbers
    plain, incremental = (outputs[name] for name in ROUTES)
    same = "same" if plain == incremental else "DIFFERENT"
    print(f"{int(best[next(iter(ROUTES))]['sentences'])} sentences, beam {args.beam}, "
          f"batch {args.batch_size}, {args.threads} thread(s), best of {args.repeats}; "
          f"hypotheses of the two routes: {same}\n")
    print("| route | seconds | sentences/s | tokens/s |")
    print("|---|---:|---:|---:|")
    for name, numbers in best.items():
        s = numbers["seconds"]
        print(f"| {name} | {s:.1f} | {numbers['sentences'] / s:.2f} | "
              f"{numbers['tokens'] / s:.1f} |")
    speedup = best[next(iter(ROUTES))]["seconds"] / best[list(ROUTES)[1]]["seconds"]
    print(f"\nspeed-up of the incremental route: {speedup:.2f}x")


if __name__ == "__main__":
    main()
