"""Where the time of a ``fairseq-train`` update goes: torch.profiler over real updates.

Usage:
    python scripts/profile_training.py [--updates 6] [--warmup 3] [--top 25] [--threads 2]
        -- DATA --user-dir fairseq_awd --task awd_language_modeling --arch awd_qrnn_lm ...

Everything after ``--`` is a ``fairseq-train`` command line without the program name. The
script builds the task, model, criterion and ``Trainer`` from it as ``fairseq-train`` does,
runs ``--warmup`` updates unprofiled, then ``--updates`` updates under ``torch.profiler``
(CPU activities, one ``record_function`` range per update), and prints

* the operators with the largest self time (total over the profiled updates, and per
  update), with their call counts;
* the self time grouped into kinds of work: matrix products (``addmm``, ``mm``, ``bmm``,
  ``linear``, the oneDNN/MKL RNN kernels), dtype conversions and copies (``copy_``, ``to``,
  ``contiguous``, ``clone``, ``cat``), ForgetMult, the softmax and loss, the optimizer's
  element-wise updates, and the rest.

The kinds are how this project's benchmarks (docs/performance.md) explain a speed: the
share of time outside the matrix products is what bf16 cannot speed up.
"""

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]

# operator-name prefixes per kind of work, first match wins (names as the profiler reports)
KINDS: Sequence[Tuple[str, Tuple[str, ...]]] = (
    ("matrix products", ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul",
                         "aten::linear", "aten::mkldnn_rnn", "aten::_mkldnn_rnn",
                         "aten::mkldnn_rnn_layer", "aten::lstm", "aten::_thnn_fused_lstm",
                         "aten::baddbmm", "aten::addbmm", "aten::_addmm_activation")),
    ("ForgetMult", ("_ForgetMultFunction", "forget_mult")),
    ("softmax and loss", ("aten::log_softmax", "aten::_log_softmax", "aten::nll_loss",
                          "aten::cross_entropy", "aten::logsumexp", "aten::softmax",
                          "aten::_softmax", "aten::exp", "_BF16CrossEntropy",
                          "NllFromBf16Logits")),
    ("dtype conversions and copies", ("aten::copy_", "aten::to", "aten::_to_copy",
                                      "aten::contiguous", "aten::clone", "aten::cat",
                                      "aten::stack", "aten::_copy_from")),
    ("optimizer", ("Optimizer.step", "aten::_foreach", "aten::add_", "aten::mul_",
                   "aten::addcmul_", "aten::addcdiv_", "aten::lerp_")),
)


def kind_of(name: str) -> str:
    for kind, prefixes in KINDS:
        if name.startswith(prefixes):
            return kind
    return "other"


def build_trainer(train_argv: List[str]):
    """Task, model, criterion, Trainer and a train iterator, as ``fairseq_cli.train`` sets
    them up (without checkpoints or validation)."""
    import numpy as np
    from fairseq import options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, train_argv)
    cfg = convert_namespace_to_omegaconf(args)
    utils.import_user_module(cfg.common)
    np.random.seed(cfg.common.seed)
    utils.set_torch_seed(cfg.common.seed)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    epoch_itr = trainer.get_train_iterator(epoch=1, load_dataset=True)
    itr = epoch_itr.next_epoch_itr(fix_batches_to_gpus=False, shuffle=False)
    return trainer, itr


def self_times(prof) -> Dict[str, Tuple[float, int]]:
    """Operator name -> (self CPU seconds, calls), over everything profiled."""
    out = {}
    for event in prof.key_averages():
        out[event.key] = (event.self_cpu_time_total / 1e6, event.count)
    return out


def report(times: Dict[str, Tuple[float, int]], updates: int, wall: float, top: int) -> str:
    total = sum(t for t, _ in times.values())
    lines = [f"{updates} updates, {wall:.2f} s wall ({wall / updates:.3f} s per update); "
             f"profiled self time {total:.2f} s", "",
             "| operator | kind | self s per update | share | calls per update |",
             "| --- | --- | ---: | ---: | ---: |"]
    for name, (seconds, calls) in sorted(times.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| `{name}` | {kind_of(name)} | {seconds / updates:.3f} | "
                     f"{seconds / total:.1%} | {calls / updates:.0f} |")
    by_kind = defaultdict(float)
    for name, (seconds, _) in times.items():
        by_kind[kind_of(name)] += seconds
    lines += ["", "| kind of work | self s per update | share |", "| --- | ---: | ---: |"]
    for kind, seconds in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {seconds / updates:.3f} | {seconds / total:.1%} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     usage="%(prog)s [options] -- FAIRSEQ_TRAIN_ARGS")
    parser.add_argument("--updates", type=int, default=6, help="profiled updates")
    parser.add_argument("--warmup", type=int, default=3, help="unprofiled updates first")
    parser.add_argument("--top", type=int, default=25, help="operators listed")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv[:split])
    train_argv = argv[split + 1:]
    if not train_argv:
        sys.exit("profile_training.py: give the fairseq-train command line after `--` "
                 "(DATA --user-dir fairseq_awd --task ... --arch ...)")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    if args.threads:
        torch.set_num_threads(args.threads)
    trainer, itr = build_trainer(train_argv)
    needed = args.warmup + args.updates
    batches = []
    for sample in itr:
        batches.append(sample)
        if len(batches) == needed:
            break
    if len(batches) < needed:
        sys.exit(f"profile_training.py: the training data gives {len(batches)} updates, "
                 f"fewer than --warmup + --updates = {needed}")
    for sample in batches[:args.warmup]:
        trainer.train_step([sample])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for step, sample in enumerate(batches[args.warmup:]):
            with record_function(f"update {step}"):
                trainer.train_step([sample])
        wall = time.perf_counter() - start
    times = {k: v for k, v in self_times(prof).items() if not k.startswith("update ")}
    print(report(times, args.updates, wall, args.top))


if __name__ == "__main__":
    main()
