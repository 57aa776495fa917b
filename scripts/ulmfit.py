"""ULMFiT with fairseq_awd on any labelled text: forward and backward LMs, their
classifiers, and the bidirectional ensemble (Howard and Ruder 2018, arXiv 1801.06146).

Usage:
    python scripts/ulmfit.py --train TRAIN --test TEST [--valid VALID] [--format tsv|trec]
        --pretrain-text DIR [--workdir ulmfit-work] [--seeds 1 2 3] [--threads N] [--limit N]

TRAIN/TEST/VALID hold one example per line, ``label<TAB>text`` (``--format tsv``) or TREC's
``COARSE:fine text`` (``--format trec``). Without ``--valid``, a fixed draw of TRAIN (500
examples, or a fifth of a smaller file) is held out for choosing checkpoints; TEST is only
scored at the end. DIR holds the pretraining corpus as ``train.txt`` and ``valid.txt``
(WikiText-2's layout). One dictionary serves every step: DIR's training text plus TRAIN's.

Steps, each skipped when its output exists (an interrupted run resumes, a pretraining from
its ``checkpoint_last.pt``):
1. Pretrain a forward and a backward LM (``--reverse-tokens``: the same streams read right
   to left) on DIR, side by side, each on half the threads.
2. Fine-tune each on the task's training text (discriminative rates, slanted triangular
   rates, early stopping on the held-out text's perplexity).
3. Per seed, train the classifiers (ULMFiT's head on concat pooling) and keep the checkpoint
   with the best held-out accuracy; training stops when that has not improved for
   ``--patience`` epochs:
   - ``scratch``: random initialization, every layer at one rate from the start;
   - ``pretrained``: the forward pretrained LM, not fine-tuned, ULMFiT's schedule
     (discriminative rates, gradual unfreezing: one layer group per epoch from the top, then
     all layers);
   - ``forward``: the fine-tuned forward LM, ULMFiT's schedule (the full recipe);
   - ``backward``: the same from the fine-tuned backward LM; the classifier reads each
     sentence reversed (``--reverse-tokens``);
   - ``ensemble``: the average of ``forward``'s and ``backward``'s class probabilities.
4. Print the test error (%) of each per seed and as mean +- sd, and the time of each step;
   write ``WORKDIR/results.json`` (test error per variant and seed, held-out accuracy,
   pretraining perplexity per epoch, seconds per step).
"""

import argparse
import json
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).parent)]

from plot_valid_curve import valid_curve  # noqa: E402,I001
from recipe_utils import (  # noqa: E402,I001
    print_seed_table,
    run_fairseq,
    run_parallel,
    train_once,
    write_lines,
)

from fairseq_awd.data.labelled_text import FORMATS, check_labels_seen, read_labelled  # noqa: E402
from fairseq_awd.errors import FairseqAWDError, install_excepthook  # noqa: E402
from fairseq_awd.evaluation.classifier_ensemble import (  # noqa: E402
    accuracy,
    average_probabilities,
    split_logits,
)

VALID_SIZE = 500
DIRECTIONS = {"forward": [], "backward": ["--reverse-tokens"]}
# --encoder -> (LM architecture, classifier architecture)
ENCODERS = {"qrnn": ("awd_qrnn_lm", "awd_qrnn_classifier"),
            "lstm": ("awd_lstm_lm", "awd_lstm_classifier")}
LM_DROPOUTS = ["--dropout", "0.1", "--dropouth", "0.1", "--dropouti", "0.1", "--dropoute", "0.0",
               "--wdrop", "0.1", "--criterion", "awd_cross_entropy", "--clip-norm", "0.25"]
# ULMFiT's Adam betas (0.7, 0.99), discriminative rates (2.6) and STLR (cut_frac 0.1, ratio 32)
ULMFIT_OPTIM = ["--optimizer", "discriminative_adam", "--adam-betas", "(0.7,0.99)",
                "--discriminative-lr-factor", "2.6", "--lr-scheduler", "polynomial_decay"]
CLASSIFIER_BATCH = 64  # ULMFiT's (Howard and Ruder 2018, section 4)
CLASSIFIER_ARGS = [
    "--task", "awd_sentence_prediction", "--criterion", "sentence_prediction",
    "--dropout", "0.2", "--dropouth", "0.2", "--dropouti", "0.2", "--dropoute", "0.05",
    "--wdrop", "0.2", "--clip-norm", "0.25", "--batch-size", str(CLASSIFIER_BATCH),
    "--max-positions", "512",
    "--required-batch-size-multiple", "1",  # else fairseq drops up to 7 examples of a split
    "--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric",
    "--no-epoch-checkpoints", "--no-last-checkpoints",
]


def held_out_split(train: List, size: int) -> tuple:
    """``(train, held out)``: a fixed draw (seed 0) of ``size`` examples, at most a fifth."""
    order = list(range(len(train)))
    random.Random(0).shuffle(order)
    held_out = set(order[:min(size, len(train) // 5)])
    return ([x for i, x in enumerate(train) if i not in held_out],
            [x for i, x in enumerate(train) if i in held_out])


def prepare(args: argparse.Namespace, data: Path) -> None:
    """Texts, one dictionary and the binarized datasets, in ``data``; built in ``data.tmp``
    and renamed at the end, so a failed run leaves nothing half-made."""
    if data.exists():
        return
    train = read_labelled(args.train, args.format)[:args.limit]
    test = read_labelled(args.test, args.format)[:args.limit]
    check_labels_seen(train, test, args.test, args.train)
    if args.valid:
        valid = read_labelled(args.valid, args.format)[:args.limit]
        check_labels_seen(train, valid, args.valid, args.train)
    else:
        train, valid = held_out_split(train, VALID_SIZE)
        check_labels_seen(train, valid, f"{args.train} (held-out draw)", args.train)
    corpus = {}
    for split in ("train", "valid"):
        path = args.pretrain_text / f"{split}.txt"
        if not path.is_file():
            raise FairseqAWDError(f"--pretrain-text: no {path}: give a folder with the "
                                  "pretraining corpus as train.txt and valid.txt")
        corpus[split] = path.read_text(encoding="utf-8").splitlines()[:args.limit]
    tmp = data.with_name(data.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    text = tmp / "text"
    text.mkdir(parents=True)
    splits = {"train": train, "valid": valid, "test": test}
    for split, examples in splits.items():
        write_lines(text / f"{split}.input", [x.text for x in examples])
        write_lines(text / f"{split}.label", [x.label for x in examples])
    for split, lines in corpus.items():
        write_lines(text / f"pretrain.{split}", lines)
    write_lines(text / "dict-source.txt", corpus["train"] + [x.text for x in train])

    def preprocess(dest: Path, *options: str) -> None:
        run_fairseq("preprocess", ["--only-source", "--destdir", str(dest), "--workers",
                                   str(args.threads), *options], args.threads,
                    tmp / f"preprocess-{dest.name}.log")

    vocab = tmp / "vocab"
    preprocess(vocab, "--trainpref", str(text / "dict-source.txt"), "--dict-only")
    srcdict = ["--srcdict", str(vocab / "dict.txt")]
    preprocess(tmp / "pretrain-bin", *srcdict, "--trainpref", str(text / "pretrain.train"),
               "--validpref", str(text / "pretrain.valid"))
    preprocess(tmp / "task-lm-bin", *srcdict, "--trainpref", str(text / "train.input"),
               "--validpref", str(text / "valid.input"))
    cls = tmp / "cls-bin"
    preprocess(cls / "input0", *srcdict, *[a for s in splits for a in
                                           (f"--{s}pref", str(text / f"{s}.input"))])
    preprocess(cls / "label", "--trainpref", str(text / "train.label"))
    preprocess(tmp / "label-eval", "--srcdict", str(cls / "label" / "dict.txt"),
               "--validpref", str(text / "valid.label"), "--testpref", str(text / "test.label"))
    for split in ("valid", "test"):
        for ext in ("bin", "idx"):
            (tmp / "label-eval" / f"{split}.{ext}").replace(cls / "label" / f"{split}.{ext}")
    shutil.rmtree(tmp / "label-eval")
    tmp.replace(data)


def lines_of(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def adaptive_softmax(data: Path) -> List[str]:
    """The LMs' tied adaptive softmax: clusters cut at 2,000 and 10,000 words (those below
    the vocabulary size)."""
    vocab_size = lines_of(data / "vocab" / "dict.txt") + 4
    cutoffs = [c for c in (2000, 10000) if c < vocab_size]
    return ["--adaptive-softmax-cutoff", ",".join(map(str, cutoffs))] if cutoffs else []


def stlr(updates: int) -> List[str]:
    """Slanted triangular rates (ULMFiT eq. 3) as fairseq's polynomial_decay: linear warmup
    over the first 10% of ``updates``, then linear decay to 1/32 of the peak."""
    return ["--warmup-updates", str(max(1, updates // 10)), "--total-num-update", str(updates)]


def epochs_of_updates(examples: int, batch_size: int, epochs: int) -> int:
    return epochs * -(-examples // batch_size)


class Recipe:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = args.workdir
        self.data = args.workdir / "data"
        self.lm_arch, self.classifier_arch = ENCODERS[args.encoder]
        self.sizes = ["--decoder-embed-dim", str(args.embed_dim), "--decoder-hidden-size",
                      str(args.hidden_size), "--decoder-layers", str(args.layers)]
        self.seconds: Dict[str, float] = {}

    def timed(self, step: str, jobs: Sequence[Callable[[int], object]]) -> List:
        start = time.perf_counter()
        results = run_parallel(jobs, self.args.threads)
        self.seconds[step] = round(time.perf_counter() - start, 1)
        return results

    def precision(self) -> List[str]:
        return ["--bf16"] if self.args.bf16 else []

    def lm_options(self, direction: str) -> List[str]:
        return ["--task", "awd_language_modeling", "--arch", self.lm_arch, *self.sizes,
                *LM_DROPOUTS, *adaptive_softmax(self.data), *DIRECTIONS[direction],
                *self.precision(), "--no-epoch-checkpoints", "--seed", "1"]

    def pretrain(self, direction: str, threads: int) -> Path:
        args = self.args
        return train_once(self.data / "pretrain-bin", self.work / f"pretrain-{direction}", [
            *self.lm_options(direction), "--optimizer", "adam", "--lr", str(args.pretrain_lr),
            "--lr-scheduler", "fixed", "--batch-size", "64", "--bptt", "70",
            "--max-epoch", str(args.pretrain_epochs),
            "--stop-time-hours", str(args.pretrain_hours)], threads)

    def finetune(self, direction: str, pretrained: Path, threads: int) -> Path:
        args = self.args
        lines = (self.data / "text" / "train.input").read_text(encoding="utf-8").splitlines()
        tokens = sum(len(line.split()) + 1 for line in lines)  # + </s>
        per_epoch = max(1, tokens // (20 * 50))
        return train_once(self.data / "task-lm-bin", self.work / f"finetune-{direction}", [
            *self.lm_options(direction), *ULMFIT_OPTIM, "--batch-size", "20", "--bptt", "50",
            "--restore-file", str(pretrained), "--reset-optimizer", "--reset-dataloader",
            "--reset-meters", "--reset-lr-scheduler", "--lr", str(args.finetune_lr),
            "--end-learning-rate", str(args.finetune_lr / 32),
            *stlr(per_epoch * args.finetune_epochs), "--max-epoch", str(args.finetune_epochs),
            "--patience", "2"], threads)

    def classify(self, variant: str, seed: int, lm: Optional[Path], threads: int) -> Path:
        """Train one classifier on ``data/cls-bin``; return its best checkpoint."""
        args = self.args
        labels = (self.data / "text" / "train.label").read_text(encoding="utf-8").split()
        num_classes = len(set(labels))  # label/dict.txt also has fairseq's padding symbols
        updates = epochs_of_updates(len(labels), CLASSIFIER_BATCH, args.classifier_epochs)
        options = [*CLASSIFIER_ARGS, "--arch", self.classifier_arch, *self.sizes,
                   *self.precision(),
                   "--num-classes", str(num_classes), *ULMFIT_OPTIM,
                   "--lr", str(args.classifier_lr), "--end-learning-rate",
                   str(args.classifier_lr / 32), *stlr(updates),
                   "--max-epoch", str(args.classifier_epochs), "--patience", str(args.patience),
                   "--seed", str(seed)]
        if lm is None:  # from scratch: every layer at one rate from the start
            options += ["--discriminative-lr-factor", "1"]
        else:
            options += ["--pretrained-lm", str(lm), "--gradual-unfreezing"]
        if variant == "backward":
            options.append("--reverse-tokens")
        save_dir = self.work / f"seed{seed}" / variant
        return train_once(self.data / "cls-bin", save_dir, options, threads)

    def run(self) -> dict:
        args = self.args
        start = time.perf_counter()
        prepare(args, self.data)
        self.seconds["prepare"] = round(time.perf_counter() - start, 1)
        pretrained = dict(zip(DIRECTIONS, self.timed("pretrain", [
            lambda t, d=d: self.pretrain(d, t) for d in DIRECTIONS])))
        finetuned = dict(zip(DIRECTIONS, self.timed("finetune", [
            lambda t, d=d: self.finetune(d, pretrained[d], t) for d in DIRECTIONS])))
        lms = {"scratch": None, "pretrained": pretrained["forward"],
               "forward": finetuned["forward"], "backward": finetuned["backward"]}
        jobs = [(seed, variant) for seed in args.seeds for variant in lms]
        best = dict(zip(jobs, self.timed("classifiers", [
            lambda t, s=s, v=v: self.classify(v, s, lms[v], t) for s, v in jobs])))

        logging.getLogger("fairseq").setLevel(logging.WARNING)  # scoring runs in this process
        start = time.perf_counter()
        members = {variant: [variant] for variant in lms}
        members["ensemble"] = ["forward", "backward"]
        error: Dict[str, Dict[int, float]] = {v: {} for v in members}
        held_out: Dict[str, Dict[int, float]] = {v: {} for v in members}
        cls = str(self.data / "cls-bin")
        for seed in args.seeds:
            for split in ("test", "valid"):  # each checkpoint read and run once per split
                logits = {v: split_logits(str(best[seed, v]), split, cls) for v in lms}
                targets = logits["scratch"][1]  # one data directory: the same for every model
                for variant, names in members.items():
                    correct = accuracy(average_probabilities(
                        [logits[name][0] for name in names]), targets)
                    if split == "test":
                        error[variant][seed] = 100.0 - correct
                    else:
                        held_out[variant][seed] = correct
        self.seconds["scoring"] = round(time.perf_counter() - start, 1)
        return {"test_error": error, "valid_accuracy": held_out,
                "pretrain_valid_ppl": {d: valid_curve(str(self.work / f"pretrain-{d}.log"))
                                       for d in DIRECTIONS},
                "finetune_valid_ppl": {d: valid_curve(str(self.work / f"finetune-{d}.log"))
                                       for d in DIRECTIONS},
                "seconds": self.seconds}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=Path, required=True, help="labelled training file")
    parser.add_argument("--test", type=Path, required=True, help="labelled test file")
    parser.add_argument("--valid", type=Path, help="labelled held-out file for choosing "
                        f"checkpoints (default: a fixed draw of {VALID_SIZE} from --train)")
    parser.add_argument("--format", choices=FORMATS, default="tsv",
                        help="tsv: label<TAB>text; trec: COARSE:fine text")
    parser.add_argument("--pretrain-text", type=Path, required=True,
                        help="folder with the pretraining corpus as train.txt and valid.txt")
    parser.add_argument("--workdir", type=Path, default=Path("ulmfit-work"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="threads in all; jobs run side by side, one thread each or more")
    parser.add_argument("--limit", type=int, default=None,
                        help="read only the first N lines of every file (a quick smoke run)")
    parser.add_argument("--encoder", choices=sorted(ENCODERS), default="qrnn",
                        help="AWD-QRNN or AWD-LSTM, for the LMs and the classifiers")
    parser.add_argument("--embed-dim", type=int, default=400,
                        help="embedding size (= the top layer's, tied to the softmax)")
    parser.add_argument("--hidden-size", type=int, default=1150,
                        help="hidden size of the other recurrent layers")
    parser.add_argument("--layers", type=int, default=3, help="recurrent layers")
    parser.add_argument("--bf16", action="store_true",
                        help="train the LMs and classifiers in bf16 (fp32 master weights); fast "
                        "on CPUs with "
                        "AMX or AVX512-BF16, much slower than fp32 without")
    parser.add_argument("--pretrain-epochs", type=int, default=10,
                        help="most pretraining epochs (--pretrain-hours usually stops it first)")
    parser.add_argument("--pretrain-hours", type=float, default=0.6,
                        help="pretraining time budget of each LM (they train side by side; "
                        "fairseq's --stop-time-hours, kept across an interrupted run)")
    parser.add_argument("--pretrain-lr", type=float, default=0.003)
    parser.add_argument("--finetune-epochs", type=int, default=10,
                        help="most LM fine-tuning epochs (stops after 2 without a better "
                        "held-out perplexity)")
    parser.add_argument("--finetune-lr", type=float, default=0.002)
    parser.add_argument("--classifier-epochs", type=int, default=12,
                        help="most classifier epochs (the first L+2 unfreeze one layer group "
                        "each)")
    parser.add_argument("--patience", type=int, default=2,
                        help="stop a classifier after this many epochs without a better "
                        "held-out accuracy")
    parser.add_argument("--classifier-lr", type=float, default=0.01)
    args = parser.parse_args(argv)
    if args.pretrain_hours <= 0:
        parser.error("--pretrain-hours must be positive")
    for name in ("pretrain_epochs", "finetune_epochs", "classifier_epochs", "patience",
                 "threads", "embed_dim", "hidden_size", "layers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")

    results = Recipe(args).run()
    n_test = lines_of(args.workdir / "data" / "text" / "test.label")
    print(f"\nTest error (%), {args.test}, {n_test} examples:\n")
    print_seed_table("classifier", results["test_error"], args.seeds, digits=1,
                     baseline="scratch")
    print("\nSeconds per step (this run; a resumed step counts only its last part): "
          + ", ".join(f"{k} {v}" for k, v in results["seconds"].items()))
    write_lines(args.workdir / "results.json", [json.dumps(results, indent=1)])


if __name__ == "__main__":
    install_excepthook()  # bad input as one line
    main()
