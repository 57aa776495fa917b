"""ULMFiT on TREC-6 with fairseq_awd: pretrain an AWD-LSTM LM, fine-tune it, classify.

Usage:
    python scripts/trec_transfer.py [--wikitext ../shared/data/wikitext-2]
        [--trec ../shared/data/trec] [--workdir trec-work] [--seeds 1 2 3] [--threads N]

Steps (each is skipped when its output exists, so an interrupted run resumes):
1. Text: TREC questions ``COARSE:fine tokens`` -> coarse label + question. 500 questions of
   ``train_5500.label`` (a fixed draw) are held out as validation for checkpoint selection;
   ``TREC_10.label`` is only the test set. One dictionary for everything: WikiText-2 train
   plus the TREC training questions (never the test questions).
2. Pretrain an AWD-LSTM LM on WikiText-2 (reduced: 3 layers, 200/400 units, tied adaptive
   softmax, Adam, ``--pretrain-epochs`` epochs).
3. Fine-tune that LM on the TREC training questions (``--finetune-updates``,
   discriminative rates, slanted triangular schedule). Then, per seed, train three
   classifiers with the same options: ``scratch`` (random initialization, every layer at
   the same rate, no unfreezing), ``pretrained`` (``--pretrained-lm`` = the WikiText-2
   LM) and ``ulmfit`` (the fine-tuned LM). The last two use discriminative rates (2.6)
   and gradual unfreezing; all use the slanted triangular schedule (fairseq's
   polynomial_decay with warmup). An ablation, ``ulmfit_all_layers``, starts from the
   fine-tuned LM but trains every layer at the same rate from the start. The checkpoint
   with the best validation accuracy is scored on the test set.
4. Print the test error of each variant per seed and as mean +- standard deviation, and
   write WORKDIR/results.json.

The settings here are reduced to run on a CPU in under an hour; the README gives the
paper-sized commands for a GPU.
"""

import argparse
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).parent)]

from recipe_utils import (  # noqa: E402,I001
    SHARED_DATA,
    USER_DIR,
    logged_metric,
    print_seed_table,
    run_fairseq,
    train_once,
    write_lines,
)

from fairseq_awd.errors import FairseqAWDError, install_excepthook  # noqa: E402

VALID_SIZE = 500
CLASSIFIER_BATCH = 32
ENCODER = ["--decoder-embed-dim", "200", "--decoder-hidden-size", "400", "--decoder-layers", "3"]
PRETRAIN_ARGS = [
    "--task", "awd_language_modeling", "--arch", "awd_lstm_lm", *ENCODER,
    "--dropout", "0.1", "--dropouth", "0.1", "--dropouti", "0.1", "--dropoute", "0.0",
    "--wdrop", "0.1", "--criterion", "awd_cross_entropy", "--optimizer", "adam", "--lr", "0.003",
    "--lr-scheduler", "fixed", "--clip-norm", "0.25", "--batch-size", "64", "--bptt", "70",
    "--no-epoch-checkpoints",
]
# ULMFiT's Adam betas (0.7, 0.99), discriminative rates (2.6) and STLR (cut_frac 0.1, ratio 32)
ULMFIT_OPTIM = ["--optimizer", "discriminative_adam", "--adam-betas", "(0.7,0.99)",
                "--discriminative-lr-factor", "2.6", "--lr-scheduler", "polynomial_decay"]
FINETUNE_ARGS = [
    "--task", "awd_language_modeling", "--arch", "awd_lstm_lm", *ENCODER,
    "--dropout", "0.1", "--dropouth", "0.1", "--dropouti", "0.1", "--dropoute", "0.0",
    "--wdrop", "0.1", "--criterion", "awd_cross_entropy", *ULMFIT_OPTIM, "--clip-norm", "0.25",
    "--batch-size", "20", "--bptt", "50",
    "--reset-optimizer", "--reset-dataloader", "--reset-meters", "--reset-lr-scheduler",
]
CLASSIFIER_ARGS = [
    "--task", "awd_sentence_prediction", "--criterion", "sentence_prediction",
    "--num-classes", "6", "--arch", "awd_lstm_classifier", *ENCODER,
    "--dropout", "0.2", "--dropouth", "0.2", "--dropouti", "0.2", "--dropoute", "0.05",
    "--wdrop", "0.2", "--clip-norm", "0.25", "--batch-size", str(CLASSIFIER_BATCH),
    "--max-positions", "512",
    "--required-batch-size-multiple", "1",  # else fairseq drops up to 7 questions of a split
    "--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric",
    "--no-epoch-checkpoints", "--no-last-checkpoints",
]


def read_trec(path: Path) -> List[Tuple[str, str]]:
    """``(coarse label, question)`` per line of a TREC ``.label`` file."""
    if not path.exists():
        raise FairseqAWDError(f"{path} not found: point --trec at the folder holding "
                              "train_5500.label and TREC_10.label")
    pairs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        label, _, question = line.partition(" ")
        if ":" not in label or not question.strip():
            raise FairseqAWDError(f"{path}:{lineno}: expected 'COARSE:fine question ...', got "
                                  f"{line[:60]!r}")
        pairs.append((label.split(":")[0], question.strip()))
    return pairs


def prepare(args: argparse.Namespace, data: Path) -> None:
    """Text files, one dictionary, and the three binarized datasets, in ``data``. Built in
    a temporary folder renamed at the end, so a failed run leaves nothing half-made."""
    if data.exists():
        return
    tmp = data.with_name(data.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    text = tmp / "text"
    text.mkdir(parents=True)
    train = read_trec(args.trec / "train_5500.label")[:args.limit]
    test = read_trec(args.trec / "TREC_10.label")[:args.limit]
    order = list(range(len(train)))
    random.Random(0).shuffle(order)
    held_out = set(order[:min(VALID_SIZE, len(train) // 5)])
    splits = {"train": [p for i, p in enumerate(train) if i not in held_out],
              "valid": [p for i, p in enumerate(train) if i in held_out], "test": test}
    for split, pairs in splits.items():
        write_lines(text / f"{split}.question", [q for _, q in pairs])
        write_lines(text / f"{split}.label", [label for label, _ in pairs])
    wikitext = {}
    for split in ("train", "valid"):
        path = args.wikitext / f"{split}.txt"
        if not path.exists():
            raise FairseqAWDError(f"{path} not found: point --wikitext at WikiText-2's "
                                  "train.txt/valid.txt (tokenized v1)")
        wikitext[split] = text / f"wikitext.{split}"
        write_lines(wikitext[split], path.read_text(encoding="utf-8").splitlines()[:args.limit])
    write_lines(text / "dict-source.txt", [
        *wikitext["train"].read_text(encoding="utf-8").splitlines(),
        *(text / "train.question").read_text(encoding="utf-8").splitlines()])

    def preprocess(dest: Path, *options: str) -> None:
        run_fairseq("preprocess", ["--only-source", "--destdir", str(dest), "--workers",
                                   str(args.threads), *options], args.threads,
                    tmp / f"preprocess-{dest.name}.log")

    vocab = tmp / "vocab"
    preprocess(vocab, "--trainpref", str(text / "dict-source.txt"), "--dict-only")
    srcdict = ["--srcdict", str(vocab / "dict.txt")]
    preprocess(tmp / "wt2-bin", *srcdict, "--trainpref", str(wikitext["train"]),
               "--validpref", str(wikitext["valid"]))
    preprocess(tmp / "trec-lm-bin", *srcdict, "--trainpref", str(text / "train.question"),
               "--validpref", str(text / "valid.question"))
    cls = tmp / "cls-bin"
    preprocess(cls / "input0", *srcdict, *[a for s in splits for a in
                                           (f"--{s}pref", str(text / f"{s}.question"))])
    preprocess(cls / "label", "--trainpref", str(text / "train.label"))
    preprocess(tmp / "label-eval", "--srcdict", str(cls / "label" / "dict.txt"),
               "--validpref", str(text / "valid.label"), "--testpref", str(text / "test.label"))
    for split in ("valid", "test"):
        for ext in ("bin", "idx"):
            (tmp / "label-eval" / f"{split}.{ext}").replace(cls / "label" / f"{split}.{ext}")
    tmp.replace(data)


def adaptive_softmax(data: Path) -> List[str]:
    """The LMs' tied adaptive softmax: clusters cut at 2,000 and 10,000 words (those below
    the vocabulary size of ``data/vocab``)."""
    vocab_size = len((data / "vocab" / "dict.txt").read_text(encoding="utf-8").splitlines()) + 4
    cutoffs = [c for c in (2000, 10000) if c < vocab_size]
    return ["--adaptive-softmax-cutoff", ",".join(map(str, cutoffs))] if cutoffs else []


def stlr(updates: int) -> List[str]:
    """Slanted triangular rates (ULMFiT eq. 3) as fairseq's polynomial_decay: linear warmup
    over the first 10% of ``updates``, then linear decay to 1/32 of the peak."""
    return ["--warmup-updates", str(max(1, updates // 10)), "--total-num-update", str(updates),
            "--max-update", str(updates)]


def updates_for(examples: int, batch_size: int, epochs: int) -> int:
    return epochs * -(-examples // batch_size)


def classify(args: argparse.Namespace, data: Path, variant: str, seed: int,
             pretrained_lm: Optional[Path], ulmfit_schedule: bool) -> float:
    """Train one classifier on ``data/cls-bin``, from ``pretrained_lm`` if given, with
    discriminative rates and gradual unfreezing if ``ulmfit_schedule`` (else every layer
    at the same rate from the start); return its test error in percent."""
    save_dir = args.workdir / f"seed{seed}" / variant
    n_train = len((data / "text" / "train.label").read_text(encoding="utf-8").splitlines())
    updates = updates_for(n_train, CLASSIFIER_BATCH, args.classifier_epochs)
    options = [*CLASSIFIER_ARGS, *ULMFIT_OPTIM, "--lr", str(args.classifier_lr),
               "--end-learning-rate", str(args.classifier_lr / 32), *stlr(updates),
               "--seed", str(seed)]
    if pretrained_lm is not None:
        options += ["--pretrained-lm", str(pretrained_lm)]
    options += ["--gradual-unfreezing"] if ulmfit_schedule else ["--discriminative-lr-factor", "1"]
    best = train_once(data / "cls-bin", save_dir, options, args.threads)
    log = run_fairseq("validate", [str(data / "cls-bin"), "--user-dir", USER_DIR,
                                   "--task", "awd_sentence_prediction",
                                   "--criterion", "sentence_prediction", "--path",
                                   str(best), "--valid-subset", "test", "--cpu",
                                   "--batch-size", "64", "--required-batch-size-multiple", "1"],
                      args.threads, save_dir.with_suffix(".test.log"))
    return 100.0 - logged_metric(log, "accuracy")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wikitext", type=Path, default=SHARED_DATA / "wikitext-2",
                        help="WikiText-2 (tokenized) folder with train.txt and valid.txt")
    parser.add_argument("--trec", type=Path, default=SHARED_DATA / "trec",
                        help="folder with train_5500.label and TREC_10.label")
    parser.add_argument("--workdir", type=Path, default=Path("trec-work"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--pretrain-epochs", type=int, default=1)
    parser.add_argument("--finetune-updates", type=int, default=500,
                        help="LM fine-tuning updates on the TREC questions (20 x 50 tokens)")
    parser.add_argument("--finetune-lr", type=float, default=0.002)
    parser.add_argument("--classifier-epochs", type=int, default=5,
                        help="5 = one per layer group: the last unfreezes the embedding")
    parser.add_argument("--classifier-lr", type=float, default=0.005)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--limit", type=int, default=None,
                        help="read only the first N lines of every file (a quick smoke run)")
    args = parser.parse_args(argv)

    work, data = args.workdir, args.workdir / "data"
    prepare(args, data)
    softmax = adaptive_softmax(data)
    pretrained = train_once(data / "wt2-bin", work / "pretrain", [
        *PRETRAIN_ARGS, *softmax, "--max-epoch", str(args.pretrain_epochs), "--seed", "1"],
        args.threads)
    finetuned = train_once(data / "trec-lm-bin", work / "lm-finetune", [
        *FINETUNE_ARGS, *softmax, "--restore-file", str(pretrained),
        "--lr", str(args.finetune_lr), "--end-learning-rate", str(args.finetune_lr / 32),
        *stlr(args.finetune_updates), "--seed", "1"], args.threads)
    # variant -> (encoder initialization, discriminative rates and gradual unfreezing)
    variants = {"scratch": (None, False), "pretrained": (pretrained, True),
                "ulmfit": (finetuned, True), "ulmfit_all_layers": (finetuned, False)}
    errors: Dict[str, Dict[int, float]] = {name: {} for name in variants}
    for seed in args.seeds:
        for variant, (lm, schedule) in variants.items():
            errors[variant][seed] = classify(args, data, variant, seed, lm, schedule)
            print(f"seed {seed} {variant}: test error {errors[variant][seed]:.1f}%", flush=True)

    n_test = len((data / "text" / "test.label").read_text(encoding="utf-8").splitlines())
    print(f"\nTREC-6 test error (%), TREC_10.label, {n_test} questions:\n")
    print_seed_table("classifier", errors, args.seeds, digits=1)
    (work / "results.json").write_text(json.dumps(errors, indent=1), encoding="utf-8")


if __name__ == "__main__":
    install_excepthook()  # bad input as one line
    main()
