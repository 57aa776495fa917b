"""Mixture of softmaxes vs the plain tied softmax at the same sizes: ``fairseq-train`` on PTB.

Usage:
    python scripts/benchmark_mos.py --data data-bin/ptb [--updates 60] [--warmup 10]
        [--threads 2] [--batch-size 12] [--components 15] [--out results.json]

Both runs are ``fairseq-train`` with the MoS paper's PTB options (``awd_lstm_lm_mos``:
embedding 280, hidden 960, ``--dropouti 0.4 --dropouth 0.225``, batch 12, lr 20, clip 0.25,
NT-ASGD, seed 28), one after the other in one invocation:

- **MoS**: ``--arch awd_lstm_lm_mos`` (last layer 620, 15 softmaxes, ``--dropoutl 0.29``);
- **plain**: the same model with one tied softmax (``--arch awd_lstm_lm`` with the same
  sizes), whose last layer must then be the embedding's size, 280.

Each trains ``--updates`` updates, then validates on the whole valid split (with
``--valid-batch-size 10``, fixed ``--bptt`` windows, as ``fairseq-eval-lm``). Reported per
run: training tokens/s over the updates after ``--warmup`` (arrival times of fairseq's
per-update log lines, as in ``benchmark_overhead.py``), peak RSS of the training process
(``ru_maxrss``, which includes the validation), the wall time of that validation (from
fairseq's "begin validation" line to its result), and the validation perplexity after the
updates. A tiny check: ``--updates 3 --warmup 1 --model-args "--decoder-hidden-size 32"``.
"""

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_overhead import REPO, fairseq_train, run_child, throughput  # noqa: E402

PTB_MOS = ("--task awd_language_modeling --criterion awd_cross_entropy --optimizer ntasgd "
           "--lr 20 --clip-norm 0.25 --weight-decay 1.2e-6 --seed 28 --decoder-embed-dim 280 "
           "--decoder-hidden-size 960 --dropouti 0.4 --dropouth 0.225 --valid-batch-size 10 "
           "--log-format json --log-interval 1 --cpu --no-progress-bar")
# awd_lstm_lm_mos adds the last layer of 620 and --dropoutl 0.29
VARIANTS = {"MoS": ["--arch", "awd_lstm_lm_mos"], "plain": ["--arch", "awd_lstm_lm"]}


def run_variant(args: argparse.Namespace, name: str, env: Dict[str, str]) -> dict:
    data = str(Path(args.data).resolve())
    variant = VARIANTS[name] + (["--mos-components", str(args.components)] if name == "MoS"
                                else [])
    cmd = ([fairseq_train(), data, "--user-dir", str(REPO / "fairseq_awd")] + PTB_MOS.split()
           + ["--batch-size", str(args.batch_size), "--max-update", str(args.updates),
              "--no-save"] + variant + shlex.split(args.model_args))
    records, rss_kb = run_child(cmd, env)
    valid = [(t, r) for t, tag, r in records if tag == "valid"]
    begin = [t for t, tag, _ in records if tag == "begin validation"]
    if not valid or not begin:
        sys.exit(f"{name}: no validation in the training log")
    result = dict(throughput(records, args.warmup), rss_mb=rss_kb / 1024,
                  valid_ppl=float(valid[-1][1]["valid_ppl"]), eval_seconds=valid[-1][0] - begin[-1])
    result["command"] = shlex.join(cmd)
    print(f"{name}: {json.dumps(result)}", file=sys.stderr)
    return result


def report(results: Dict[str, dict], args: argparse.Namespace) -> str:
    lines = [f"{args.updates} updates of batch {args.batch_size} (tokens/s over updates "
             f"{args.warmup + 1}..{args.updates}), {args.threads} threads\n",
             "| softmax | train tokens/s | peak RSS MiB | validation s | valid ppl |",
             "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['tps']:.1f} | {r['rss_mb']:.0f} | "
                     f"{r['eval_seconds']:.1f} | {r['valid_ppl']:.2f} |")
    ratio = results["MoS"]["tps"] / results["plain"]["tps"]
    lines.append(f"\nMoS trains at {ratio:.2f}x the plain softmax's tokens/s")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="binarized PTB (scripts/prepare_data.py)")
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=12, help="the MoS paper's 12")
    parser.add_argument("--components", type=int, default=15)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--model-args", default="", help="extra fairseq-train options")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if not (Path(args.data) / "dict.txt").is_file():
        sys.exit(f"error: no dict.txt in --data {args.data}: binarize PTB with "
                 "scripts/prepare_data.py --corpus ptb")
    if not 0 < args.warmup < args.updates:
        sys.exit(f"error: --warmup must be in [1, --updates), got {args.warmup}")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    results = {name: run_variant(args, name, env) for name in VARIANTS}
    print(report(results, args))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
