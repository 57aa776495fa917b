"""Draw validation perplexity per epoch, or per minute of training, from fairseq-train logs
(matplotlib: the ``plot`` extra).

    python scripts/plot_valid_curve.py train.log finetune.log --labels training fine-tuning \\
        --chain --output valid_curve.png
    python scripts/plot_valid_curve.py qrnn.log lstm.log --labels QRNN LSTM --minutes \\
        --output valid_per_minute.png

Reads fairseq's ``valid`` records in the ``simple`` or ``json`` log format. With
``--chain``, each log's epochs continue where the previous log's ended (a fine-tuning stage
restarted with ``--reset-dataloader`` counts its epochs from 1 again). With ``--minutes``,
every validation (mid-epoch ones too, ``--validate-interval-updates``) is drawn against the
wall-clock minutes of training before it: the time from fairseq's first "Start iterating
over samples" line, less the time spent validating.
"""

import argparse
import json
import re
import sys
from datetime import datetime
from typing import List, Optional, Tuple

SIMPLE = re.compile(r"\| valid \| epoch (\d+) \| valid on '[^']*' subset \|.*\| ppl ([0-9.]+)")
JSON = re.compile(r"\| valid \| (\{.*\})\s*$")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \| ")


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


def _valid_ppl(line: str) -> Optional[float]:
    match = SIMPLE.search(line)
    if match:
        return float(match.group(2))
    match = JSON.search(line)
    if match:
        record = json.loads(match.group(1))
        if "valid_ppl" in record:
            return float(record["valid_ppl"])
    return None


def valid_curve_by_time(path: str) -> List[Tuple[float, float]]:
    """``(minutes of training, validation perplexity)`` of every validation in a log. The
    minutes count from the first "Start iterating over samples" line to the validation's
    record, less the time between each "begin validation" line and its record (timestamps
    have a resolution of one second)."""
    points, start, began, validating = [], None, None, 0.0
    with open(path, encoding="utf-8") as f:
        for line in f:
            stamp = STAMP.match(line)
            if not stamp:
                continue
            now = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
            if start is None:
                if "Start iterating over samples" in line:
                    start = now
                continue
            if "begin validation on" in line:
                began = now
                continue
            ppl = _valid_ppl(line)
            if ppl is not None:
                validating += now - (began if began is not None else now)
                began = None
                points.append(((now - start - validating) / 60, ppl))
    return points


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", help="fairseq-train logs")
    parser.add_argument("--labels", nargs="+", help="one legend entry per log")
    parser.add_argument("--chain", action="store_true",
                        help="number each log's epochs after the previous log's last")
    parser.add_argument("--minutes", action="store_true",
                        help="every validation against the minutes of training before it")
    parser.add_argument("--title", help="the picture's title")
    parser.add_argument("--output", required=True, help="picture to write (e.g. curve.png)")
    args = parser.parse_args(argv)
    if args.minutes and args.chain:
        sys.exit("error: --chain numbers epochs; --minutes draws each log from its own start")
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
            curve = valid_curve_by_time(path) if args.minutes else valid_curve(path)
        except OSError as err:
            sys.exit(f"error: cannot read {path}: {err.strerror}")
        if not curve:
            sys.exit(f"error: {path} has no {'' if args.minutes else 'end-of-epoch '}"
                     "validation lines of fairseq-train")
        xs = [x + offset for x, _ in curve]
        ax.plot(xs, [ppl for _, ppl in curve], marker="o", markersize=3,
                label=args.labels[i] if args.labels else path)
        ax.annotate(f"{curve[-1][1]:.2f}", (xs[-1], curve[-1][1]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
        if args.chain:
            offset = xs[-1]
    ax.set_xlabel("minutes of training" if args.minutes else "epoch")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.set_title(args.title or ("validation perplexity per minute of training" if args.minutes
                                else "validation perplexity per epoch"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
