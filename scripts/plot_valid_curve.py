"""Draw validation perplexity per epoch from fairseq-train logs (matplotlib: the ``plot``
extra).

    python scripts/plot_valid_curve.py train.log finetune.log --labels training fine-tuning \\
        --chain --output valid_curve.png

Reads fairseq's ``valid`` records in the ``simple`` or ``json`` log format. With
``--chain``, each log's epochs continue where the previous log's ended (a fine-tuning stage
restarted with ``--reset-dataloader`` counts its epochs from 1 again).
"""

import argparse
import json
import re
import sys
from typing import List, Tuple

SIMPLE = re.compile(r"\| valid \| epoch (\d+) \| valid on '[^']*' subset \|.*\| ppl ([0-9.]+)")
JSON = re.compile(r"\| valid \| (\{.*\})\s*$")


def valid_curve(path: str) -> List[Tuple[int, float]]:
    """``(epoch, validation perplexity)`` of every end-of-epoch validation in a log, with a
    later record of the same epoch (a mid-epoch validation before it) replacing an earlier."""
    points = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            match = SIMPLE.search(line)
            if match:
                points[int(match.group(1))] = float(match.group(2))
                continue
            match = JSON.search(line)
            if match:
                record = json.loads(match.group(1))
                if "epoch" in record and "valid_ppl" in record:
                    points[int(record["epoch"])] = float(record["valid_ppl"])
    return sorted(points.items())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", help="fairseq-train logs")
    parser.add_argument("--labels", nargs="+", help="one legend entry per log")
    parser.add_argument("--chain", action="store_true",
                        help="number each log's epochs after the previous log's last")
    parser.add_argument("--title", default="validation perplexity per epoch")
    parser.add_argument("--output", required=True, help="picture to write (e.g. curve.png)")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.logs):
        sys.exit(f"error: {len(args.logs)} logs but {len(args.labels)} labels: give one each")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("error: matplotlib is missing: pip install 'fairseq_awd[plot]'")

    fig, ax = plt.subplots(figsize=(6, 3.6))
    offset = 0
    for i, path in enumerate(args.logs):
        try:
            curve = valid_curve(path)
        except OSError as err:
            sys.exit(f"error: cannot read {path}: {err.strerror}")
        if not curve:
            sys.exit(f"error: {path} has no end-of-epoch validation lines of fairseq-train")
        epochs = [epoch + offset for epoch, _ in curve]
        ax.plot(epochs, [ppl for _, ppl in curve], marker="o", markersize=3,
                label=args.labels[i] if args.labels else path)
        for epoch, (_, ppl) in zip(epochs, curve):
            if epoch == epochs[-1]:
                ax.annotate(f"{ppl:.2f}", (epoch, ppl), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
        if args.chain:
            offset = epochs[-1]
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.set_title(args.title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
