"""Training throughput and peak memory of ``fairseq-train`` vs a plain PyTorch loop.

Usage:
    python scripts/benchmark_overhead.py --data data-bin/ptb [--updates 60] [--warmup 10]
        [--repeats 2] [--threads N] [--model-args "--decoder-layers 2 ..."] [--out res.json]
        [--device cuda] [--bf16]
    python scripts/benchmark_overhead.py --data data-bin/ptb --first-epoch

Run A is ``fairseq-train`` with ``awd_lstm_lm`` in the paper's PTB setting (lr 30, clip 0.25,
batch 20, bptt 70, seed 141, dropouti 0.4, dropouth 0.25, NT-ASGD), ``--log-interval 1``;
run B is ``scripts/plain_loop.py`` given the very same options: same model, seeds and
batches, trained by a hand-written loop (forward, loss, backward, clip, ``torch.optim.SGD``).
Both are subprocesses with the same environment, run interleaved A, B, A, B, ...

Tokens/s: this script stamps ``time.perf_counter()`` when each per-update log line of a
child arrives (fairseq's ``train_inner`` JSON line, the loop's JSON line) and takes the
tokens of updates ``warmup+1 .. updates`` over the time from update ``warmup``'s line to
the last one. fairseq's own logged ``wps`` gives the cross-check ``A (fairseq wps)``
(its ``wall``/``train_wall`` columns are rounded to whole seconds, too coarse). The table
gives the median over repeats; overhead = ``1 - tok/s(A) / tok/s(B)``.

Peak memory: ``ru_maxrss`` from ``os.wait4`` on each child, i.e. the peak resident set of
that child (or of a DataLoader worker it reaped, if larger), never summed over runs.

``--first-epoch`` instead runs one full epoch of the paper's command with validation
(``--valid-batch-size 10``) and reports the epoch's wall time and validation perplexity.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
LOG_LINE = re.compile(r"\| (\w+) \| (\{.*\})\s*$")
PAPER_PTB = ("--task awd_language_modeling --arch {arch} --criterion awd_cross_entropy "
             "--optimizer ntasgd --lr 30 --clip-norm 0.25 --weight-decay 1.2e-6 "
             "--batch-size {batch_size} --bptt {bptt} --seed {seed} --dropouti 0.4 "
             "--dropouth 0.25 --no-save --log-format json --no-progress-bar")
DEVICE_FLAGS = {"cpu": ["--cpu"], "cuda": []}


def train_options(args: argparse.Namespace) -> List[str]:
    """DATA and the paper's PTB options, shared by both runs (no stopping/logging choice)."""
    return ([str(Path(args.data).resolve()), "--user-dir", str(REPO / "fairseq_awd")]
            + PAPER_PTB.format(**vars(args)).split() + DEVICE_FLAGS[args.device]
            + ["--bf16"] * args.bf16 + shlex.split(args.model_args))


def read_child(proc: subprocess.Popen) -> Tuple[List[Tuple[float, str, dict]], List[str]]:
    """The child's JSON log records as ``(arrival time, tag, record)`` and its last 40 lines,
    read until it closes its output."""
    records: List[Tuple[float, str, dict]] = []
    tail: List[str] = []
    for line in iter(proc.stdout.readline, ""):
        now = time.perf_counter()
        tail = (tail + [line])[-40:]
        match = LOG_LINE.search(line)
        if match:
            records.append((now, match.group(1), json.loads(match.group(2))))
        elif line.startswith('{"'):
            records.append((now, "plain", json.loads(line)))
        for event in ("begin training epoch", "begin validation"):
            if event in line:
                records.append((now, event, {}))
    return records, tail


def run_child(cmd: List[str], env: Dict[str, str]) -> Tuple[List[Tuple[float, str, dict]], int]:
    """Run ``cmd``; return its JSON log records as ``(arrival time, tag, record)`` and its
    peak RSS in KiB (``ru_maxrss`` of ``os.wait4``)."""
    # in a scratch folder: fairseq-train makes its --save-dir (./checkpoints) even with
    # --no-save, and the working folder may not be writable (a read-only checkout)
    with tempfile.TemporaryDirectory(prefix="benchmark_overhead.") as scratch:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, cwd=scratch)
        records, tail = read_child(proc)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n" + "".join(tail))
    return records, usage.ru_maxrss


def throughput(records: List[Tuple[float, str, dict]], warmup: int) -> Dict[str, float]:
    """Tokens/s of the updates after ``warmup``, from the per-update lines' arrival times."""
    steps = [(t, r) for t, tag, r in records if tag in ("train_inner", "plain") and "done" not in r]
    if len(steps) <= warmup:
        sys.exit(f"only {len(steps)} updates logged, need more than --warmup {warmup}")
    timed = steps[warmup:]
    tokens = sum(float(r.get("wpb", r.get("ntokens", 0))) for _, r in timed)
    out = {"tps": tokens / (timed[-1][0] - steps[warmup - 1][0]),
           "updates": len(timed), "last_loss": float(steps[-1][1]["loss"])}
    if "wps" in timed[0][1]:
        out["fairseq_wps_tps"] = tokens / sum(float(r["wpb"]) / float(r["wps"]) for _, r in timed)
    return out


def benchmark(args: argparse.Namespace, env: Dict[str, str]) -> dict:
    stop = ["--max-update", str(args.updates), "--disable-validation", "--log-interval", "1"]
    common = train_options(args) + stop
    cmds = {"A": [fairseq_train()] + common,
            "B": [sys.executable, str(REPO / "scripts" / "plain_loop.py")] + common}
    runs: Dict[str, List[dict]] = {"A": [], "B": []}
    for repeat in range(args.repeats):
        for name in ("A", "B"):
            records, rss_kb = run_child(cmds[name], env)
            result = dict(throughput(records, args.warmup), rss_mb=rss_kb / 1024)
            done = [r for _, tag, r in records if tag == "plain" and r.get("done")]
            result["threads"] = done[0]["threads"] if done else None
            print(f"repeat {repeat + 1} {name}: {result}", file=sys.stderr)
            runs[name].append(result)
    return {"commands": cmds, "runs": runs}


def report_benchmark(res: dict, args: argparse.Namespace) -> str:
    runs = res["runs"]
    tps = {name: statistics.median(r["tps"] for r in rs) for name, rs in runs.items()}
    threads = runs["B"][0]["threads"]
    res["overhead_pct"] = 100.0 * (1.0 - tps["A"] / tps["B"])
    rows = [("A: fairseq-train", "A", "tps"), ("A (fairseq wps)", "A", "fairseq_wps_tps"),
            ("B: plain PyTorch loop", "B", "tps")]
    lines = [f"Updates {args.warmup + 1}..{args.updates} timed, {args.repeats} repeat(s), "
             f"torch threads {threads}\n",
             "| run | tokens/s (median) | tokens/s (each) | peak RSS MiB (max) | last loss |",
             "|---|---:|---:|---:|---:|"]
    for label, name, key in rows:
        each = [r[key] for r in runs[name]]
        lines.append(f"| {label} | {statistics.median(each):.1f} | "
                     + ", ".join(f"{v:.1f}" for v in each)
                     + f" | {max(r['rss_mb'] for r in runs[name]):.1f} | "
                     + f"{runs[name][-1]['last_loss']:.3f} |")
    verdict = "OK" if res["overhead_pct"] < 10 else "OVER the 10% budget"
    lines.append(f"\nOverhead of fairseq-train: {res['overhead_pct']:.1f}% ({verdict})")
    return "\n".join(lines)


def first_epoch(args: argparse.Namespace, env: Dict[str, str]) -> dict:
    cmd = ([fairseq_train()] + train_options(args)
           + ["--max-epoch", "1", "--valid-batch-size", "10", "--log-interval", "100"])
    records, rss_kb = run_child(cmd, env)
    times: Dict[str, float] = {}
    for t, tag, _ in records:
        times.setdefault(tag, t)
    valid = next(r for _, tag, r in records if tag == "valid")
    train = next(r for _, tag, r in records if tag == "train")
    begin = times["begin training epoch"]
    return {"commands": {"first-epoch": cmd}, "valid_ppl": float(valid["valid_ppl"]),
            "train_wps": float(train["train_wps"]), "rss_mb": rss_kb / 1024,
            "epoch_s": times["train"] - begin, "train_s": times["begin validation"] - begin,
            "valid_s": times["valid"] - times["begin validation"]}


def report_first_epoch(res: dict) -> str:
    return "\n".join([
        "| epoch 1 s | training s | validation s | train tokens/s | valid ppl | peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {res['epoch_s']:.1f} | {res['train_s']:.1f} | {res['valid_s']:.1f} | "
        f"{res['train_wps']:.1f} | {res['valid_ppl']:.2f} | {res['rss_mb']:.1f} |"])


def fairseq_train() -> str:
    local = Path(sys.executable).with_name("fairseq-train")
    return str(local) if local.exists() else (shutil.which("fairseq-train") or "fairseq-train")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="fairseq-preprocess --only-source dir")
    parser.add_argument("--updates", type=int, default=60, help="updates per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed first updates")
    parser.add_argument("--repeats", type=int, default=2, help="A/B pairs, interleaved")
    parser.add_argument("--arch", default="awd_lstm_lm")
    parser.add_argument("--model-args", default="", help="extra fairseq-train options for "
                        'both runs (quoted; --model-args="--x" for a single option)')
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--bptt", type=int, default=70)
    parser.add_argument("--seed", type=int, default=141)
    parser.add_argument("--threads", type=int, help="OMP/MKL_NUM_THREADS for both runs "
                        "(default: torch's default)")
    parser.add_argument("--device", choices=sorted(DEVICE_FLAGS), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="fairseq's --bf16 for run A; run "
                        "B runs its steps under torch.autocast(bfloat16)")
    parser.add_argument("--first-epoch", action="store_true",
                        help="one epoch of the paper's command with validation instead")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if not 1 <= args.warmup < args.updates:
        parser.error("need 1 <= --warmup < --updates (update WARMUP's line starts the clock)")
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    prefix = f"OMP_NUM_THREADS={args.threads} MKL_NUM_THREADS={args.threads} " * bool(
        args.threads)
    if args.first_epoch:
        res = first_epoch(args, env)
        table = report_first_epoch(res)
    else:
        res = benchmark(args, env)
        table = report_benchmark(res, args)
    print(table + "\n\nCommands (each run in an empty scratch folder):")
    for name, cmd in res["commands"].items():
        print(f"\n{name}:\n    {prefix}{shlex.join(cmd)}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
