#!/usr/bin/env python
"""How much of the input reaches the top of an AWD-QRNN stack (issue 33, docs/qrnn-learning.md).

Two measurements, on real text (by default the first 20 x 70 tokens of PTB's valid split),
layer by layer from the bottom, in eval mode from a zero state:

* ``--init``: freshly initialized stacks (``QRNNLayer`` with each ``--gains`` value; 0 is
  PyTorch's default init, what the reference QRNN has) under a U(-0.1, 0.1) embedding, as
  the AWD models build them;
* ``--checkpoint PATH --data DATA-BIN``: a trained ``awd_qrnn_lm`` checkpoint.

Per layer it prints the mean forget and output gate, mean |z|, the mean of h^2 (the whole
output) and the mean squared step difference (h_{t+1} - h_t)^2, the part of the output that
changes with the input (what TAR measures on the top layer).

    python scripts/qrnn_signal.py --init --embed-dim 400 --hidden-size 1550 --gains 0 2 3.5
    python scripts/qrnn_signal.py --checkpoint ckpt/checkpoint_last.pt --data data-bin
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq_awd.modules.qrnn import QRNNLayer  # noqa: E402

DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "penn" / "valid.txt"


def words_of(path: Path, batch: int, steps: int):
    words = path.read_text(encoding="utf-8").replace("\n", " </s> ").split()
    if len(words) < batch * steps:
        raise SystemExit(f"{path} has {len(words)} tokens, {batch * steps} needed")
    return words[: batch * steps]


def layer_stats(layer: QRNNLayer, x: torch.Tensor, h: torch.Tensor) -> dict:
    """Gates recomputed from the layer's input ``x (T, B, C)``; ``h`` its output."""
    source = x
    if layer.window == 2:
        source = torch.cat([torch.cat([x.new_zeros(1, *x.shape[1:]), x[:-1]]), x], dim=-1)
    gates = torch.nn.functional.linear(source, layer.linear.weight, layer.linear.bias)
    z, f, o = gates.chunk(3, dim=-1)[:3]
    return {"f": torch.sigmoid(f).mean().item(), "o": torch.sigmoid(o).mean().item(),
            "|z|": torch.tanh(z).abs().mean().item(), "h^2": h.pow(2).mean().item(),
            "dh^2": (h[1:] - h[:-1]).pow(2).mean().item()}


def show(title: str, rows) -> None:
    print(title)
    for i, s in enumerate(rows):
        print(f"  layer {i}: f {s['f']:.3f}  o {s['o']:.3f}  |z| {s['|z|']:.4f}  "
              f"h^2 {s['h^2']:.2e}  (h_t+1 - h_t)^2 {s['dh^2']:.2e}")


def at_init(args) -> None:
    words = words_of(args.text, args.batch, args.steps)
    vocab = {w: i for i, w in enumerate(sorted(set(words)))}
    ids = torch.tensor([vocab[w] for w in words]).view(args.batch, args.steps).t()
    sizes = [args.embed_dim] + [args.hidden_size] * (args.layers - 1) + [args.embed_dim]
    for gain in args.gains:
        torch.manual_seed(args.seed)
        x = torch.empty(len(vocab), args.embed_dim).uniform_(-0.1, 0.1)[ids]
        rows = []
        with torch.no_grad():
            for i in range(args.layers):
                layer = QRNNLayer(sizes[i], sizes[i + 1], 2 if i == 0 else 1,
                                  init_gain=gain).eval()
                h, _ = layer(x)
                rows.append(layer_stats(layer, x, h))
                x = h
        show(f"init gain {gain} (embed {args.embed_dim}, hidden {args.hidden_size})", rows)


def trained(args) -> None:
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(args.checkpoint)], arg_overrides={"data": str(args.data)})
    model = models[0].eval()
    d = task.target_dictionary
    words = words_of(args.text, args.batch, args.steps)
    ids = torch.tensor([d.index(w) for w in words]).view(args.batch, args.steps)
    rows = []
    def record(module, inputs, output):
        rows.append(layer_stats(module, inputs[0], output[0]))

    layers = getattr(model.decoder, "encoder", model.decoder).layers  # encoder since issue 30
    hooks = [layer.register_forward_hook(record) for layer in layers]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    show(str(args.checkpoint), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", action="store_true", help="measure freshly built stacks")
    parser.add_argument("--checkpoint", type=Path, help="an awd_qrnn_lm checkpoint")
    parser.add_argument("--data", type=Path, help="the checkpoint's data-bin (its dict.txt)")
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT,
                        help="tokenized text (default: PTB valid)")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--steps", type=int, default=70)
    parser.add_argument("--embed-dim", type=int, default=400)
    parser.add_argument("--hidden-size", type=int, default=1550)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--gains", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.5])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.checkpoint is None and not args.init:
        parser.error("give --init or --checkpoint")
    if args.init:
        at_init(args)
    if args.checkpoint is not None:
        if args.data is None:
            parser.error("--checkpoint needs --data")
        trained(args)


if __name__ == "__main__":
    main()
