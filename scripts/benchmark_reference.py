"""Training throughput and peak memory of the reference ``main.py`` beside ``fairseq-train``.

Usage:
    python scripts/benchmark_reference.py --reference ~/awd-lstm-lm --raw-data data/penn \\
        --data data-bin/ptb [--arch lstm] [--updates 30] [--warmup 8] [--repeats 2]
        [--threads N] [--precisions fp32 bf16]
    python scripts/benchmark_reference.py --arch qrnn --reference ~/awd-lstm-lm \\
        --qrnn-reference ~/pytorch-qrnn --raw-data data/penn --data data-bin/ptb
    python scripts/benchmark_reference.py ... --reference-only   # no fairseq-train runs

``--reference`` is a checkout of salesforce/awd-lstm-lm (``main.py``, ``model.py``, ...),
``--qrnn-reference`` one of salesforce/pytorch-qrnn (``torchqrnn/``), ``--raw-data`` the
PTB text the reference reads (``train.txt``, ``valid.txt``, ``test.txt``), ``--data`` the
same corpus binarized for fairseq (``scripts/prepare_data.py --corpus ptb``). Nothing is
fetched and the checkouts are not modified.

Runs, on the CPU, interleaved (reference, fp32, bf16, reference, ...) ``--repeats`` times,
each a subprocess with the same environment (``OMP/MKL_NUM_THREADS=--threads``), each in
its own empty scratch folder:

- ``--arch lstm``: the reference's PTB command, ``main.py --batch_size 20 --dropouti 0.4
  --dropouth 0.25 --seed 141 --epoch 1 --cuda`` (``--cuda`` is ``store_false`` in
  ``main.py``: passing it means the CPU), against ``fairseq-train --arch awd_lstm_lm`` with
  the paper's PTB options (``benchmark_overhead.PAPER_PTB``), fp32 and ``--bf16``.
- ``--arch qrnn``: ``main.py --model QRNN --batch_size 20 --clip 0.2 --wdrop 0.1 --nhid 1550
  --nlayers 4 --emsize 400 --dropouth 0.3 --seed 9001 --dropouti 0.4 --lr 30 --epoch 1
  --cuda`` (pytorch-qrnn's CPU ForgetMult, a Python loop over time steps) against
  ``fairseq-train --arch awd_qrnn_lm --seed 9001 --clip-norm 0.2 --dropouth 0.3``, the
  plugin's matching command (docs/qrnn-learning.md).

The reference runs in a child of this script (``--_reference-child``, see
``reference_child``) that patches it, in memory, for today's PyTorch on a CPU and counts
its updates: each training ``RNNModel.forward`` records the tokens of its batch (the
input's numel, ``seq_len x 20``: the reference draws every window's length, like the
plugin), and the next forward, which starts after that update's optimizer step, prints one
JSON line for it; the child exits after ``--updates`` of them, before the end of the epoch.

Tokens/s is timed as in ``benchmark_overhead.py``: ``time.perf_counter()`` stamped here
when each per-update line of a child arrives (fairseq's ``train_inner`` JSON line, the
reference child's line), the tokens of updates ``warmup+1 .. updates`` over the time from
update ``warmup``'s line to the last one. The table gives the median over repeats and each
repeat, the peak RSS (``ru_maxrss`` from ``os.wait4`` on the child, the largest over
repeats), the training cross-entropy of the last update in bits (the reference's raw loss,
fairseq's ``nll_loss``; neither includes AR/TAR) and tokens/s relative to the reference.
"""

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from benchmark_overhead import (  # noqa: E402
    DEVICE_FLAGS,
    PAPER_PTB,
    fairseq_train,
    run_child,
    throughput,
)

REPO = SCRIPTS.parent
CHILD_FLAG = "--_reference-child"
# the papers' commands (salesforce/awd-lstm-lm README), on the CPU; --data is added
REFERENCE_ARGS = {
    "lstm": "--batch_size 20 --dropouti 0.4 --dropouth 0.25 --seed 141 --epoch 1 --cuda",
    "qrnn": "--model QRNN --batch_size 20 --clip 0.2 --wdrop 0.1 --nhid 1550 --nlayers 4 "
            "--emsize 400 --dropouth 0.3 --seed 9001 --dropouti 0.4 --lr 30 --epoch 1 --cuda",
}
# fairseq-train's arch, seed and the options that differ from PAPER_PTB (the LSTM's)
FAIRSEQ_SETTING = {
    "lstm": ("awd_lstm_lm", 141, {}),
    "qrnn": ("awd_qrnn_lm", 9001, {"--clip-norm": "0.2", "--dropouth": "0.3"}),
}
PRECISION_FLAGS = {"fp32": [], "bf16": ["--bf16"]}  # as benchmark_qrnn.py's


def reference_child(argv: List[str]) -> None:
    """The shim: run the reference ``main.py`` in this process, in the current folder, patched
    in memory and instrumented. ``argv``: ``--checkout DIR [--qrnn-checkout DIR] --updates
    N -- MAIN_PY_ARGS``."""
    import importlib.machinery
    import importlib.util
    import runpy
    import types

    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog=f"benchmark_reference.py {CHILD_FLAG}")
    parser.add_argument("--checkout", required=True)
    parser.add_argument("--qrnn-checkout")
    parser.add_argument("--updates", type=int, required=True)
    args, main_args = parser.parse_args(argv[:split]), argv[split + 1:]
    sys.dont_write_bytecode = True  # importing the checkouts' modules must not add __pycache__
    # first on the path, the checkout's own modules (model, data, utils, weight_drop, ...)
    sys.path[:0] = [args.checkout] + [args.qrnn_checkout] * bool(args.qrnn_checkout)
    # (c) pytorch-qrnn's forget_mult.py imports cupy and pynvrtc at its top, but only its GPU
    # kernel uses them: where they are not installed, empty stand-ins let the CPU path load
    for package, module, name in (("cupy", "cuda", "function"), ("pynvrtc", "compiler", "Program")):
        if importlib.util.find_spec(package) is None:
            stubs = [types.ModuleType(package), types.ModuleType(f"{package}.{module}")]
            for stub in stubs:
                stub.__spec__ = importlib.machinery.ModuleSpec(stub.__name__, None)
                sys.modules[stub.__name__] = stub
            setattr(stubs[0], module, stubs[1])
            setattr(stubs[1], name, None)
    import torch

    # (a) torch >= 2.6 loads only tensors by default; main.py torch.load()s pickled objects
    # (its corpus.<md5>.data cache, [model, criterion, optimizer] from --save)
    torch_load = torch.load

    def load(*load_args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return torch_load(*load_args, **kwargs)

    torch.load = load
    import model  # the checkout's, as main.py's `import model` will find it in sys.modules
    import splitcross
    import weight_drop

    # (b) in eval mode F.dropout returns the raw Parameter itself, which setattr registers
    # as a parameter of the wrapped module; the next training-mode setattr of a plain tensor
    # then fails (TypeError): forget the registered one first
    setweights = weight_drop.WeightDrop._setweights

    def _setweights(self):
        for name_w in self.weights:
            self.module._parameters.pop(name_w, None)
        setweights(self)

    weight_drop.WeightDrop._setweights = _setweights
    # (d) a forward starts after the previous update's optimizer step: it reports that update
    # (its tokens, its loss, the time) and ends the run after --updates of them
    forward, criterion_forward = model.RNNModel.forward, splitcross.SplitCrossEntropyLoss.forward
    state = {"done": 0, "ntokens": None, "loss": None}

    def counted_forward(self, input, *rest, **kwargs):
        if state["ntokens"] is not None:
            state["done"] += 1
            bits = float(state["loss"]) / math.log(2)
            print(json.dumps({"update": state["done"], "ntokens": state["ntokens"], "loss": bits,
                              "nll_loss": bits, "t": time.perf_counter()}), flush=True)
            state["ntokens"] = None
            if state["done"] >= args.updates:
                raise SystemExit(0)
        if self.training:  # not validation's forwards
            state["ntokens"] = input.numel()
        return forward(self, input, *rest, **kwargs)

    def kept_loss(self, *loss_args, **kwargs):  # the raw loss (no AR/TAR), for the table
        loss = criterion_forward(self, *loss_args, **kwargs)
        state["loss"] = loss.detach()
        return loss

    model.RNNModel.forward = counted_forward
    splitcross.SplitCrossEntropyLoss.forward = kept_loss
    main_py = str(Path(args.checkout) / "main.py")
    sys.argv = [main_py] + main_args
    runpy.run_path(main_py, run_name="__main__")


def reference_command(args: argparse.Namespace) -> List[str]:
    """The child that runs the reference's command for ``args.arch`` through the shim."""
    qrnn = (["--qrnn-checkout", str(Path(args.qrnn_reference).resolve())]
            if args.arch == "qrnn" else [])
    main_args = REFERENCE_ARGS[args.arch].split()
    at = main_args.index("--batch_size") + 2  # --data after --batch_size 20, as in the README
    main_args[at:at] = ["--data", str(Path(args.raw_data).resolve())]
    return ([sys.executable, str(Path(__file__).resolve()), CHILD_FLAG,
             "--checkout", str(Path(args.reference).resolve()), *qrnn,
             "--updates", str(args.updates), "--"] + main_args)


def fairseq_command(args: argparse.Namespace, precision: str) -> List[str]:
    """``fairseq-train`` in the plugin's setting matching the reference's command."""
    arch, seed, changes = FAIRSEQ_SETTING[args.arch]
    options = PAPER_PTB.format(arch=arch, batch_size=20, bptt=70, seed=seed).split()
    for option, value in changes.items():
        options[options.index(option) + 1] = value
    return ([fairseq_train(), str(Path(args.data).resolve()), "--user-dir",
             str(REPO / "fairseq_awd")] + options + DEVICE_FLAGS["cpu"]
            + ["--max-update", str(args.updates), "--disable-validation", "--log-interval", "1"]
            + PRECISION_FLAGS[precision])


def child_clock_tps(records: List[Tuple[float, str, dict]], warmup: int) -> Optional[float]:
    """Tokens/s of the reference child by its own ``perf_counter`` stamps (a cross-check)."""
    steps = [r for _, tag, r in records if tag == "plain" and "t" in r]
    if len(steps) <= warmup:
        return None
    timed = steps[warmup:]
    return sum(r["ntokens"] for r in timed) / (timed[-1]["t"] - steps[warmup - 1]["t"])


def benchmark(args: argparse.Namespace, env: Dict[str, str]) -> Dict[str, dict]:
    """Run every command ``args.repeats`` times, interleaved; the results of each run."""
    cmds = {"reference": reference_command(args)}
    for precision in [] if args.reference_only else args.precisions:
        cmds[f"fairseq-train {precision}"] = fairseq_command(args, precision)
    runs: Dict[str, List[dict]] = {name: [] for name in cmds}
    for repeat in range(args.repeats):
        for name, cmd in cmds.items():
            records, rss_kb = run_child(cmd, env)
            result = dict(throughput(records, args.warmup), rss_mb=rss_kb / 1024)
            steps = [r for _, tag, r in records if tag in ("train_inner", "plain")]
            result["last_nll_bits"] = float(steps[-1].get("nll_loss", "nan"))
            result["child_clock_tps"] = child_clock_tps(records, args.warmup)
            print(f"repeat {repeat + 1} {name}: {result}", file=sys.stderr)
            runs[name].append(result)
    return {"commands": cmds, "runs": runs}


def report(res: Dict[str, dict], args: argparse.Namespace) -> str:
    """The markdown table of ``benchmark``'s results."""
    runs = res["runs"]
    tps = {name: statistics.median(r["tps"] for r in rs) for name, rs in runs.items()}
    labels = {"reference": "reference main.py (fp32)"}
    lines = [f"--arch {args.arch}, PTB, batch 20, BPTT about 70; updates {args.warmup + 1}.."
             f"{args.updates} timed, {args.repeats} repeat(s), threads "
             f"{args.threads or 'default'}\n",
             "| run | tokens/s (median) | tokens/s (each) | peak RSS MiB (max) | "
             f"train nll bits, update {args.updates} | tokens/s vs reference |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, rs in runs.items():
        lines.append(f"| {labels.get(name, name)} | {tps[name]:.1f} | "
                     + ", ".join(f"{r['tps']:.1f}" for r in rs)
                     + f" | {max(r['rss_mb'] for r in rs):.0f} | {rs[-1]['last_nll_bits']:.3f} | "
                     + f"{tps[name] / tps['reference']:.2f}x |")
    own = [r["child_clock_tps"] for r in runs["reference"] if r["child_clock_tps"]]
    if own:
        lines.append(f"\nReference tokens/s by the child's own perf_counter stamps (median): "
                     f"{statistics.median(own):.1f}")
    return "\n".join(lines)


def check_inputs(args: argparse.Namespace) -> Optional[str]:
    """A one-line complaint about the given paths, or None."""
    missing = [f for f in ("main.py", "model.py") if not (Path(args.reference) / f).is_file()]
    if missing:
        return (f"--reference {args.reference}: no {' or '.join(missing)} there (expected a "
                "salesforce/awd-lstm-lm checkout)")
    if args.arch == "qrnn":
        if not args.qrnn_reference:
            return "--arch qrnn needs --qrnn-reference (a salesforce/pytorch-qrnn checkout)"
        if not (Path(args.qrnn_reference) / "torchqrnn" / "__init__.py").is_file():
            return (f"--qrnn-reference {args.qrnn_reference}: no torchqrnn/__init__.py there "
                    "(expected a salesforce/pytorch-qrnn checkout)")
    missing = [f for f in ("train.txt", "valid.txt", "test.txt")
               if not (Path(args.raw_data) / f).is_file()]
    if missing:
        return f"--raw-data {args.raw_data}: no {', '.join(missing)} there (the PTB text)"
    if not args.reference_only:
        if not args.data:
            return "--data (binarized PTB) is needed unless --reference-only"
        if not (Path(args.data) / "dict.txt").is_file():
            return (f"--data {args.data}: no dict.txt there (binarize PTB with "
                    "scripts/prepare_data.py --corpus ptb)")
    return None


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CHILD_FLAG]:
        reference_child(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True,
                        help="salesforce/awd-lstm-lm checkout (left unchanged)")
    parser.add_argument("--qrnn-reference", help="salesforce/pytorch-qrnn checkout (--arch qrnn)")
    parser.add_argument("--raw-data", required=True, help="PTB text: train/valid/test.txt")
    parser.add_argument("--data", help="the same corpus binarized for fairseq")
    parser.add_argument("--arch", choices=sorted(REFERENCE_ARGS), default="lstm")
    parser.add_argument("--updates", type=int, default=30, help="updates per run")
    parser.add_argument("--warmup", type=int, default=8, help="untimed first updates")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of interleaved runs")
    parser.add_argument("--threads", type=int, help="OMP/MKL_NUM_THREADS for every run "
                        "(default: torch's default)")
    parser.add_argument("--precisions", nargs="+", choices=sorted(PRECISION_FLAGS),
                        default=["fp32", "bf16"], help="fairseq-train fp32 and/or --bf16")
    parser.add_argument("--reference-only", action="store_true",
                        help="time the reference alone, no fairseq-train runs")
    args = parser.parse_args(argv)
    if not 1 <= args.warmup < args.updates:
        parser.error("need 1 <= --warmup < --updates (update WARMUP's line starts the clock)")
    problem = check_inputs(args)
    if problem:
        sys.exit(f"benchmark_reference.py: error: {problem}")
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    prefix = f"OMP_NUM_THREADS={args.threads} MKL_NUM_THREADS={args.threads} " * bool(
        args.threads)
    res = benchmark(args, env)
    print(report(res, args) + "\n\nCommands (each run in an empty scratch folder):")
    for name, cmd in res["commands"].items():
        print(f"\n{name}:\n    {prefix}{shlex.join(cmd)}")


if __name__ == "__main__":
    main()
