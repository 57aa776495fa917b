"""Full softmax vs tied adaptive softmax: training speed and softmax memory by vocabulary size.

Usage:
    python scripts/benchmark_adaptive_softmax.py [--vocab-sizes 10000,50000,250000]
        [--devices cpu,cuda] [--arch awd_lstm_lm] [--embed-dim 400] [--hidden-size 1150]
        [--layers 3] [--batch-size 20] [--bptt 70] [--steps 5] [--warmup 2] [--threads N]
        [--cutoff-fractions 0.0105,0.0747,0.2839] [--zipf 1.0] [--out results.json]

For each device and vocabulary size ``V`` it builds the same AWD model twice, with the tied
full softmax and with the tied adaptive softmax (``--adaptive-softmax-cutoff``, cut at
``--cutoff-fractions`` of ``V``: by default the WikiText-103 cutoffs 2800, 20000, 76000 of
its 267,735 words, scaled to ``V``). Token ids are synthetic, drawn from a Zipf law
``p(rank r) ~ 1 / r^s`` over the vocabulary (``--zipf s``), the frequency ordering that
fairseq-preprocess gives a real dictionary. It measures:

- **train tokens/s**: whole training steps (model forward, ``awd_cross_entropy`` with AR
  and TAR, backward, ``torch.optim.SGD`` step) on ``--batch-size x --bptt`` tokens;
  median over ``--steps`` timed steps after ``--warmup`` untimed ones.
- **softmax tokens/s**: the output layer and the loss alone (forward and backward) on
  fixed ``(B, T, E)`` features, timed the same way.
- **softmax peak MiB**: the peak of memory allocated during that softmax step (forward
  and backward, gradients of the embedding and output bias included) above what was
  allocated before it (parameters, features and targets are not counted). On CPU, from the
  allocator events that ``torch.profiler`` records with ``profile_memory=True`` (a running
  sum of allocations and frees); on CUDA, ``torch.cuda.max_memory_allocated``.
- **parameters**: of the whole model (the tied embedding counted once).

Prints a markdown table (and writes JSON with ``--out``). A tiny check of the script:
``python scripts/benchmark_adaptive_softmax.py --vocab-sizes 1000 --steps 2 --warmup 1``.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq.data import Dictionary  # noqa: E402

from fairseq_awd.criterions.awd_cross_entropy import AWDCrossEntropyCriterion  # noqa: E402
from fairseq_awd.errors import install_excepthook  # noqa: E402
from fairseq_awd.models.awd_lstm_lm import AWDLSTMConfig, AWDLSTMLanguageModel  # noqa: E402
from fairseq_awd.models.awd_qrnn_lm import AWDQRNNConfig, AWDQRNNLanguageModel  # noqa: E402

MODELS = {"awd_lstm_lm": (AWDLSTMConfig, AWDLSTMLanguageModel),
          "awd_qrnn_lm": (AWDQRNNConfig, AWDQRNNLanguageModel)}
MIB = 2**20


def make_dictionary(vocab_size: int) -> Dictionary:
    """A fairseq dictionary of ``vocab_size`` entries (its 4 special symbols included)."""
    dictionary = Dictionary()
    for i in range(vocab_size - len(dictionary)):
        dictionary.add_symbol(f"w{i}")
    return dictionary


def zipf_ids(shape, vocab_size: int, nspecial: int, exponent: float,
             rng: np.random.Generator) -> torch.Tensor:
    """Word ids in ``[nspecial, vocab_size)``; id ``nspecial + r`` has probability
    proportional to ``1 / (r + 1)^exponent``."""
    ranks = np.arange(1, vocab_size - nspecial + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -exponent)
    cdf /= cdf[-1]
    draws = np.searchsorted(cdf, rng.random(int(np.prod(shape))), side="right")
    draws = np.minimum(draws, len(ranks) - 1)
    return torch.from_numpy(draws + nspecial).long().view(*shape)


def cutoffs_for(vocab_size: int, fractions: List[float]) -> str:
    cutoffs = sorted({max(1, int(round(f * vocab_size))) for f in fractions})
    return ",".join(str(c) for c in cutoffs if c < vocab_size)


def build(args: argparse.Namespace, dictionary: Dictionary, cutoff: Optional[str]):
    config_class, model_class = MODELS[args.arch]
    cfg = config_class(decoder_embed_dim=args.embed_dim, decoder_hidden_size=args.hidden_size,
                       decoder_layers=args.layers, adaptive_softmax_cutoff=cutoff)
    task = SimpleNamespace(target_dictionary=dictionary, source_dictionary=dictionary)
    return model_class.build_model(cfg, task), task


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(step: Callable[[], None], steps: int, warmup: int,
                   device: torch.device) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated while ``step`` runs, above what was allocated before it."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and str(e.device_type()) == "DeviceType.CPU"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def measure(args: argparse.Namespace, device: torch.device, vocab_size: int,
            kind: str) -> Dict[str, object]:
    dictionary = make_dictionary(vocab_size)
    cutoff = cutoffs_for(vocab_size, args.cutoff_fractions) if kind == "adaptive" else None
    torch.manual_seed(args.seed)
    model, task = build(args, dictionary, cutoff)
    model.to(device).train()
    decoder = model.decoder
    criterion = AWDCrossEntropyCriterion(task, alpha=2.0, beta=1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(args.seed)
    shape = (args.batch_size, args.bptt)
    stream = zipf_ids((args.batch_size, args.bptt * 4 + 1), vocab_size, dictionary.nspecial,
                      args.zipf, rng).to(device)
    windows = [(stream[:, i * args.bptt:(i + 1) * args.bptt],
                stream[:, i * args.bptt + 1:(i + 1) * args.bptt + 1]) for i in range(4)]
    counter = {"i": 0}

    def train_step() -> None:
        x, y = windows[counter["i"] % len(windows)]
        counter["i"] += 1
        sample = {"net_input": {"src_tokens": x, "stream_id": "bench",
                                "stream_start": counter["i"] == 1},
                  "target": y, "ntokens": y.numel(), "nsentences": y.size(0)}
        loss, _, _ = criterion(model, sample)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    features = torch.randn(*shape, decoder.word_vectors.size(1), device=device) * 0.1
    features.requires_grad_(True)
    target = zipf_ids(shape, vocab_size, dictionary.nspecial, args.zipf, rng).to(device)

    def softmax_step() -> None:
        model.zero_grad(set_to_none=True)
        features.grad = None
        nll = decoder.output_nll((decoder.output_layer(features), None), target).sum()
        nll.backward()

    train_s = median_seconds(train_step, args.steps, args.warmup, device)
    softmax_s = median_seconds(softmax_step, args.steps, args.warmup, device)
    model.zero_grad(set_to_none=True)
    features.grad = None
    peak = peak_bytes(softmax_step, device)
    ntokens = args.batch_size * args.bptt
    return {
        "device": device.type, "vocab": vocab_size, "softmax": kind, "cutoffs": cutoff or "",
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens_per_s": ntokens / train_s, "softmax_tokens_per_s": ntokens / softmax_s,
        "softmax_peak_mib": peak / MIB,
    }


def table(results: List[Dict[str, object]]) -> str:
    lines = [
        "| device | vocab | softmax | cutoffs | parameters | train tokens/s | "
        "softmax tokens/s | softmax peak MiB |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    full = {(r["device"], r["vocab"]): r for r in results if r["softmax"] == "full"}
    for r in results:
        base = full.get((r["device"], r["vocab"]))
        ratios = ("", "", "")
        if r["softmax"] != "full" and base is not None:
            ratios = (f" ({r['train_tokens_per_s'] / base['train_tokens_per_s']:.1f}x)",
                      f" ({r['softmax_tokens_per_s'] / base['softmax_tokens_per_s']:.1f}x)",
                      f" ({r['softmax_peak_mib'] / max(base['softmax_peak_mib'], 1e-9):.2f}x)")
        lines.append(
            f"| {r['device']} | {r['vocab']:,} | {r['softmax']} | {r['cutoffs'] or '-'} | "
            f"{r['parameters']:,} | {r['train_tokens_per_s']:,.0f}{ratios[0]} | "
            f"{r['softmax_tokens_per_s']:,.0f}{ratios[1]} | "
            f"{r['softmax_peak_mib']:,.1f}{ratios[2]} |"
        )
    return "\n".join(lines)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab-sizes", default="10000,50000,250000")
    parser.add_argument("--devices", default=None,
                        help="comma-separated (default: cpu, and cuda when available)")
    parser.add_argument("--arch", choices=sorted(MODELS), default="awd_lstm_lm")
    parser.add_argument("--embed-dim", type=int, default=400)
    parser.add_argument("--hidden-size", type=int, default=1150)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--bptt", type=int, default=70)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--cutoff-fractions", default="0.0105,0.0747,0.2839",
                        help="adaptive softmax cutoffs as fractions of the vocabulary size")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of the ids")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    args.vocab_sizes = [int(v) for v in args.vocab_sizes.split(",")]
    args.cutoff_fractions = [float(f) for f in args.cutoff_fractions.split(",")]
    if args.devices is None:
        args.devices = "cpu,cuda" if torch.cuda.is_available() else "cpu"
    args.devices = [torch.device(d) for d in args.devices.split(",")]
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for device in args.devices:
        for vocab_size in args.vocab_sizes:
            for kind in ("full", "adaptive"):
                result = measure(args, device, vocab_size, kind)
                print(json.dumps(result), file=sys.stderr, flush=True)
                results.append(result)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    print(f"{args.arch}, embed {args.embed_dim}, hidden {args.hidden_size}, {args.layers} "
          f"layers, batch {args.batch_size} x bptt {args.bptt}, Zipf s={args.zipf}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    install_excepthook()  # bad input as one line
    main()
