"""QRNN speed: the ForgetMult kernel, a QRNN layer against nn.LSTM, and fairseq-train.

Usage:
    python scripts/benchmark_qrnn.py forget-mult [--device cuda] [--peak-gbps 3350]
    python scripts/benchmark_qrnn.py layer [--device cpu] [--batches 8 32] [--seqs 32 128]
    python scripts/benchmark_qrnn.py train --data data-bin/ptb [--updates 30 --warmup 8]
        [--precisions fp32 bf16] [--threads 2]

``forget-mult``: time of the forward and of the backward kernel for sizes from
(T 70, B 20, H 1550) to (T 1000, B 8, H 2500), with the bytes each must move (forward reads
f, x and writes h: 3 T B H elements; backward reads f, x, h, dh and writes df, dx: 6) and
the achieved bandwidth. On a GPU it is given as a fraction of the device's peak (known
cards, or ``--peak-gbps``); on the CPU as a fraction of what ``torch.clone`` of a 256 MiB
tensor achieves on the same machine, with the reference Python loop alongside.

``layer``: forward + backward of one QRNN layer (fo-pooling, window 2, its gate projection
included) against ``nn.LSTM`` (cuDNN on GPU, oneDNN/MKL on CPU) of the same input and
hidden size, for the paper's sizes (batch 8 to 256, sequence 32 to 500, hidden 320, 640).
Medians of ``--repeats`` timed runs after one warm-up.

``train``: tokens/s of ``fairseq-train`` with ``awd_qrnn_lm`` against ``awd_lstm_lm`` at
equal parameter count, each in fp32 and with ``--bf16`` (``--precisions``): the LSTM in the
paper's PTB setting (3 x 1150, 24.2M parameters on PTB), the QRNN with 4 layers and the
hidden size that gives the same count. Runs are interleaved (each architecture and
precision in turn, ``--repeats`` times) and timed as in ``benchmark_overhead.py``; the
first repeat of each also validates after its ``--updates`` (PTB valid, 10 streams), which
gives the validation perplexity of every variant after the same updates.
"""

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from benchmark_overhead import DEVICE_FLAGS, PAPER_PTB, fairseq_train, run_child, throughput  # noqa: E402

from fairseq_awd.errors import install_excepthook  # noqa: E402
from fairseq_awd.modules import QRNNLayer  # noqa: E402
from fairseq_awd.modules.forget_mult import forget_mult  # noqa: E402

PEAK_GBPS = {"H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H200": 4800, "A100-SXM4-80GB": 2039,
             "A100-SXM4-40GB": 1555, "A100-PCIE-40GB": 1555, "V100": 900}
# fairseq's own --bf16: a bf16 model with fp32 master weights (on the CPU through the
# plugin's tasks, see fairseq_awd/tasks/cpu_bf16.py)
PRECISION_FLAGS = {"fp32": [], "bf16": ["--bf16"]}
FORGET_MULT_SIZES = [(70, 20, 1550), (140, 60, 2500), (500, 8, 2500), (1000, 8, 2500)]


def timed(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bandwidth(device: str, override: float) -> (float, str):
    if override:
        return override, "given"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, gbps in PEAK_GBPS.items():
            if key in name:
                return gbps, f"{name} spec"
        sys.exit(f"unknown GPU {name!r}: pass --peak-gbps")
    big = torch.empty(64 * 2**20)  # 256 MiB
    seconds = timed(lambda: big.clone(), device, 5)
    return 2 * big.numel() * 4 / seconds / 1e9, "torch.clone of 256 MiB"


def bench_forget_mult(args) -> None:
    device = args.device
    peak, source = peak_bandwidth(device, args.peak_gbps)
    backends = ["cuda"] if device == "cuda" else ["cpu", "reference"]
    print(f"ForgetMult on {device_name(device)}, fp32; peak {peak:.0f} GB/s ({source})\n")
    print("| T x B x H | backend | forward ms | fwd GB/s | fwd % peak | backward ms "
          "| bwd GB/s | bwd % peak |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for steps, batch, hidden in FORGET_MULT_SIZES:
        f = torch.rand(steps, batch, hidden, device=device, requires_grad=True)
        x = torch.randn(steps, batch, hidden, device=device, requires_grad=True)
        h0 = torch.randn(batch, hidden, device=device, requires_grad=True)
        grad = torch.randn(steps, batch, hidden, device=device)
        elements = steps * batch * hidden * 4  # fp32 bytes per tensor
        for backend in backends:
            if backend == "reference" and steps * batch * hidden > 3 * 10**6:
                continue  # the Python loop's backward takes minutes beyond the first size
            repeats = 1 if backend == "reference" else args.repeats
            fwd, total = time_forget_mult(f, x, h0, grad, backend, device, repeats)
            fwd_gbps, bwd_gbps = 3 * elements / fwd / 1e9, 6 * elements / total / 1e9
            print(f"| {steps} x {batch} x {hidden} | {backend} | {fwd * 1e3:.2f} | "
                  f"{fwd_gbps:.1f} | {100 * fwd_gbps / peak:.0f}% | {total * 1e3:.2f} | "
                  f"{bwd_gbps:.1f} | {100 * bwd_gbps / peak:.0f}% |")


def time_forget_mult(f, x, h0, grad, backend: str, device: str, repeats: int):
    """Median seconds of the forward pass and of the backward pass alone."""
    with torch.no_grad():
        forward = timed(lambda: forget_mult(f, x, h0, backend=backend), device, repeats)
    h = forget_mult(f, x, h0, backend=backend)
    backward = timed(lambda: torch.autograd.grad(h, (f, x, h0), grad, retain_graph=True),
                     device, repeats)
    return forward, backward


def time_forward_backward(layer: nn.Module, x: torch.Tensor, device: str, repeats: int) -> float:
    def step():
        out, _ = layer(x)
        out.sum().backward()

    return timed(step, device, repeats)


def bench_layer(args) -> None:
    device = args.device
    print(f"One layer, forward + backward, fp32, on {device_name(device)} "
          f"(torch threads {torch.get_num_threads()})\n")
    print("| batch | seq | hidden | nn.LSTM ms | QRNN ms | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for hidden in args.hiddens:
        for batch in args.batches:
            for steps in args.seqs:
                x = torch.randn(steps, batch, hidden, device=device, requires_grad=True)
                torch.manual_seed(0)
                lstm = nn.LSTM(hidden, hidden).to(device)
                qrnn = QRNNLayer(hidden, hidden, window=2, pooling="fo").to(device)
                times = {name: time_forward_backward(layer, x, device, args.repeats)
                         for name, layer in (("lstm", lstm), ("qrnn", qrnn))}
                print(f"| {batch} | {steps} | {hidden} | {times['lstm'] * 1e3:.1f} | "
                      f"{times['qrnn'] * 1e3:.1f} | {times['lstm'] / times['qrnn']:.2f}x |")


def parameter_count(arch: str, vocab: int, model_args: List[str]) -> int:
    """Parameters of ``arch`` for a ``vocab``-word dictionary, built the way fairseq does."""
    from types import SimpleNamespace

    from fairseq.data import Dictionary

    from fairseq_awd.models.awd_lstm_lm import AWDLSTMConfig, AWDLSTMLanguageModel
    from fairseq_awd.models.awd_qrnn_lm import AWDQRNNConfig, AWDQRNNLanguageModel

    config_class, model_class = {
        "awd_lstm_lm": (AWDLSTMConfig, AWDLSTMLanguageModel),
        "awd_qrnn_lm": (AWDQRNNConfig, AWDQRNNLanguageModel),
    }[arch]
    dictionary = Dictionary()
    for i in range(vocab - len(dictionary)):
        dictionary.add_symbol(f"w{i}")
    options = dict(zip(model_args[::2], model_args[1::2]))
    cfg = config_class(**{k.lstrip("-").replace("-", "_"): int(v) for k, v in options.items()})
    task = SimpleNamespace(target_dictionary=dictionary, source_dictionary=dictionary)
    return sum(p.numel() for p in model_class.build_model(cfg, task).parameters())


def matching_qrnn_hidden(vocab: int) -> (int, int, int):
    """``(LSTM parameters, QRNN hidden size, QRNN parameters)``: the 4-layer QRNN hidden size
    (a multiple of 10) whose parameter count is closest to the paper's AWD-LSTM's."""
    lstm = parameter_count("awd_lstm_lm", vocab, [])

    def qrnn(hidden: int) -> int:
        return parameter_count("awd_qrnn_lm", vocab, ["--decoder-hidden-size", str(hidden)])

    low, high = 50, 300  # in tens; the count grows with the hidden size
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if qrnn(10 * mid) < lstm else (low, mid)
    best = min((10 * low, 10 * high), key=lambda h: abs(qrnn(h) - lstm))
    return lstm, best, qrnn(best)


def bench_train(args) -> None:
    vocab = sum(1 for _ in open(Path(args.data) / "dict.txt", encoding="utf-8")) + 4
    lstm_params, hidden, qrnn_params = matching_qrnn_hidden(vocab)
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    base = [fairseq_train(), str(Path(args.data).resolve()), "--user-dir",
            str(REPO / "fairseq_awd"), "--max-update", str(args.updates), "--log-interval", "1",
            *DEVICE_FLAGS["cpu"],
            "--valid-batch-size", "10"]
    options = vars(args) | {"batch_size": 20, "bptt": 70, "seed": 141}
    archs = {
        "awd_qrnn_lm": PAPER_PTB.format(**options | {"arch": "awd_qrnn_lm"}).split()
        + ["--decoder-hidden-size", str(hidden)],
        "awd_lstm_lm": PAPER_PTB.format(**options | {"arch": "awd_lstm_lm"}).split(),
    }
    cmds = {(arch, precision): base + flags + PRECISION_FLAGS[precision]
            for arch, flags in archs.items() for precision in args.precisions}
    results: Dict[tuple, List[dict]] = {name: [] for name in cmds}
    valid_ppl: Dict[tuple, float] = {}
    for repeat in range(args.repeats):
        for name, cmd in cmds.items():
            # the first repeat also validates after its updates (PTB valid, 10 streams)
            records, rss_kb = run_child(cmd + ([] if repeat == 0 else ["--disable-validation"]),
                                        env)
            result = dict(throughput(records, args.warmup), rss_mb=rss_kb / 1024)
            valid = [r for _, tag, r in records if tag == "valid"]
            if repeat == 0:
                if not valid:
                    sys.exit(f"{name}: no validation in the training log")
                valid_ppl[name] = float(valid[-1]["valid_ppl"])
            print(f"repeat {repeat + 1} {name}: {result}", file=sys.stderr)
            results[name].append(result)
    params = {"awd_qrnn_lm": qrnn_params, "awd_lstm_lm": lstm_params}
    layers = {"awd_qrnn_lm": f"4 x {hidden}", "awd_lstm_lm": "3 x 1150"}
    print(f"fairseq-train, PTB setting (batch 20, BPTT 70), updates {args.warmup + 1}.."
          f"{args.updates}, {args.repeats} repeat(s), threads {args.threads or 'default'}\n")
    print("| arch | precision | layers | parameters | tokens/s (median) | tokens/s (each) "
          f"| peak RSS MiB | valid ppl after {args.updates} updates |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    medians = {}
    for (arch, precision), runs in results.items():
        medians[arch, precision] = statistics.median(r["tps"] for r in runs)
        print(f"| {arch} | {precision} | {layers[arch]} | {params[arch] / 1e6:.2f}M | "
              f"{medians[arch, precision]:.1f} | "
              + ", ".join(f"{r['tps']:.1f}" for r in runs)
              + f" | {max(r['rss_mb'] for r in runs):.0f} | {valid_ppl[arch, precision]:.2f} |")
    print()
    for precision in args.precisions:
        print(f"QRNN / LSTM tokens/s, both {precision}: "
              f"{medians['awd_qrnn_lm', precision] / medians['awd_lstm_lm', precision]:.2f}x")
    if "bf16" in args.precisions and "fp32" in args.precisions:
        print(f"QRNN bf16 / LSTM fp32 tokens/s: "
              f"{medians['awd_qrnn_lm', 'bf16'] / medians['awd_lstm_lm', 'fp32']:.2f}x")
        for arch in archs:
            gap = valid_ppl[arch, "bf16"] / valid_ppl[arch, "fp32"] - 1
            print(f"{arch} valid ppl, bf16 against fp32: {100 * gap:+.1f}%")
    for (arch, precision), cmd in cmds.items():
        print(f"\n{arch} {precision}:\n    {shlex.join(cmd)}")


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    fm = sub.add_parser("forget-mult", help="kernel time and bandwidth")
    fm.add_argument("--device", default=default_device, choices=["cpu", "cuda"])
    fm.add_argument("--peak-gbps", type=float, help="peak memory bandwidth to compare with")
    fm.add_argument("--repeats", type=int, default=20)
    layer = sub.add_parser("layer", help="QRNN layer against nn.LSTM")
    layer.add_argument("--device", default=default_device, choices=["cpu", "cuda"])
    layer.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    layer.add_argument("--seqs", type=int, nargs="+", default=[32, 64, 128, 256, 500])
    layer.add_argument("--hiddens", type=int, nargs="+", default=[320, 640])
    layer.add_argument("--repeats", type=int, default=5)
    train = sub.add_parser("train", help="fairseq-train tokens/s, QRNN against LSTM")
    train.add_argument("--data", required=True, help="binarized PTB (scripts/prepare_data.py)")
    train.add_argument("--updates", type=int, default=30)
    train.add_argument("--warmup", type=int, default=8)
    train.add_argument("--repeats", type=int, default=2)
    train.add_argument("--threads", type=int, help="OMP/MKL_NUM_THREADS for every run")
    train.add_argument("--precisions", nargs="+", choices=sorted(PRECISION_FLAGS),
                       default=["fp32", "bf16"], help="fp32 and/or bf16 (--bf16)")
    args = parser.parse_args(argv)
    if args.what == "forget-mult":
        bench_forget_mult(args)
    elif args.what == "layer":
        bench_layer(args)
    else:
        if not 1 <= args.warmup < args.updates:
            parser.error("need 1 <= --warmup < --updates")
        bench_train(args)


if __name__ == "__main__":
    install_excepthook()  # bad input as one line
    main()
