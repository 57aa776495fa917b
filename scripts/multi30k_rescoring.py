"""Multi30k German->English: beam search, n-best reranking and shallow fusion with an AWD-LSTM.

Usage:
    python scripts/multi30k_rescoring.py [--data ../shared/data/multi30k] [--workdir multi30k-work]
        [--seeds 1 2 3] [--mt-max-update 900] [--lm-max-epoch 4] [--threads N]

Steps (each is skipped when its output exists, so an interrupted run resumes, and a run
with more seeds reuses the prepared data and the seeds already done):
1. Moses-tokenize (sacremoses, cased, no escaping) and BPE-segment (subword-nmt, codes
   learned jointly on task-1 train German+English) task 1 train / val / test_2016_flickr
   and the task-2 English captions: train.1-5 (training images only) for the LM, val.1
   for its validation. No task-2 test caption is read.
2. Binarize: the translation data with separate dictionaries, the LM corpus with
   ``--srcdict`` = the translation model's English dictionary (needed for fusion).
Per seed, in WORKDIR/seedS:
3. Train a small transformer (3+3 layers, 256 units) and an AWD-LSTM LM, on the CPU.
4. Decode val and test_2016_flickr with beam search (``--nbest`` = beam); rerank with
   ``fairseq-awd-rescore`` (weights tuned on val), and again with the LM weight held at 0
   (the length-only ablation); decode with incremental shallow fusion
   (``--task translation_lm_fusion``, weight tuned on val). Write results.json.
Then:
5. Print sacrebleu BLEU on test_2016_flickr (detokenized, cased): a column per seed, the
   mean +- sd over seeds, and the gain over beam search as mean +- sd.
"""

import argparse
import gzip
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).parent)]

from recipe_utils import (  # noqa: E402
    SHARED_DATA,
    USER_DIR,
    preprocess_once,
    print_seed_table,
    run_fairseq,
    train_once,
    write_lines,
)

from fairseq_awd.errors import FairseqAWDError, install_excepthook  # noqa: E402
from fairseq_awd.rescoring.nbest import parse_nbest  # noqa: E402
from fairseq_awd.rescoring.rerank import corpus_bleu  # noqa: E402

# split name here -> (task folder, file stem); task-1 files are {stem}.{de,en}.gz
MT_SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
LM_TRAIN = [f"train.{i}.en.gz" for i in range(1, 6)]
LM_VALID = ["val.1.en.gz"]
LENGTH_ONLY = "ablation: reranking by length only"
MT_ARGS = [
    "--arch", "transformer", "--encoder-layers", "3", "--decoder-layers", "3",
    "--encoder-embed-dim", "256", "--decoder-embed-dim", "256",
    "--encoder-ffn-embed-dim", "512", "--decoder-ffn-embed-dim", "512",
    "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
    "--share-decoder-input-output-embed", "--dropout", "0.3", "--attention-dropout", "0.1",
    "--weight-decay", "0.0001", "--criterion", "label_smoothed_cross_entropy",
    "--label-smoothing", "0.1", "--optimizer", "adam", "--adam-betas", "(0.9,0.98)",
    "--lr", "0.001", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "400",
    "--max-tokens", "4096", "--no-epoch-checkpoints",
]
LM_ARGS = [
    "--task", "awd_language_modeling", "--arch", "awd_lstm_lm", "--decoder-embed-dim", "256",
    "--decoder-hidden-size", "512", "--decoder-layers", "2", "--dropout", "0.2",
    "--dropouth", "0.15", "--dropouti", "0.2", "--dropoute", "0.05", "--wdrop", "0.2",
    "--criterion", "awd_cross_entropy", "--optimizer", "adam", "--lr", "0.003",
    "--lr-scheduler", "fixed", "--clip-norm", "0.25", "--batch-size", "80", "--bptt", "50",
    "--no-epoch-checkpoints",
]
# --required-batch-size-multiple 1: fairseq 0.12 drops a split's last batch when its size
# is not a multiple of this (default 8), so some sentences would never be translated
DECODE_ARGS = ["--source-lang", "de", "--target-lang", "en", "--tokenizer", "moses",
               "--bpe", "subword_nmt", "--batch-size", "64", "--required-batch-size-multiple",
               "1", "--max-len-a", "1.2", "--max-len-b", "10"]


def read_gz(path: Path, limit: Optional[int] = None) -> List[str]:
    if not path.exists():
        raise FairseqAWDError(f"{path} not found: point --data at the Multi30k folder that "
                              "holds task1/ and task2/ (raw *.gz files)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for _, line in zip(range(limit or sys.maxsize), f)]


def prepare_text(data: Path, out: Path, bpe_merges: int, limit: Optional[int]) -> None:
    """Tokenize and BPE every split into ``out/{split}.{lang}`` and ``out/lm.{split}.en``."""
    if (out / "done").exists():
        return
    from sacremoses import MosesTokenizer
    from subword_nmt.apply_bpe import BPE
    from subword_nmt.learn_bpe import learn_bpe

    tokenizers = {lang: MosesTokenizer(lang) for lang in ("de", "en")}

    def tokenize(lines: List[str], lang: str) -> List[str]:
        tok = tokenizers[lang]
        return [tok.tokenize(line, escape=False, return_str=True) for line in lines]

    def read(folder: str, names: List[str], lang: str) -> List[str]:
        return tokenize([x for name in names for x in read_gz(data / folder / name, limit)], lang)

    text = {(split, lang): read("task1", [f"{stem}.{lang}.gz"], lang)
            for split, stem in MT_SPLITS.items() for lang in ("de", "en")}
    lm_text = {"train": read("task2", LM_TRAIN, "en"), "valid": read("task2", LM_VALID, "en")}
    out.mkdir(parents=True, exist_ok=True)
    write_lines(out / "joined.tok", text["train", "de"] + text["train", "en"])
    with open(out / "joined.tok", encoding="utf-8") as fin, \
            open(out / "codes", "w", encoding="utf-8") as fout:
        learn_bpe(fin, fout, bpe_merges)
    with open(out / "codes", encoding="utf-8") as f:
        bpe = BPE(f)
    for (split, lang), lines in text.items():
        write_lines(out / f"{split}.{lang}", [bpe.process_line(x) for x in lines])
    for split, lines in lm_text.items():
        write_lines(out / f"lm.{split}.en", [bpe.process_line(x) for x in lines])
    for split, stem in MT_SPLITS.items():  # references for BLEU: the raw English
        write_lines(out / f"{split}.ref.en", read_gz(data / "task1" / f"{stem}.en.gz", limit))
    (out / "done").touch()


def binarize(text: Path, mt_bin: Path, lm_bin: Path, threads: int) -> None:
    preprocess_once(mt_bin, ["--source-lang", "de", "--target-lang", "en",
                             *[a for s in MT_SPLITS for a in (f"--{s}pref", str(text / s))]],
                    threads)
    # fairseq loads a fusion LM's dictionary from DATA/dict.txt: the target dictionary
    shutil.copy(mt_bin / "dict.en.txt", mt_bin / "dict.txt")
    preprocess_once(lm_bin, ["--only-source", "--srcdict", str(mt_bin / "dict.en.txt"),
                             "--trainpref", str(text / "lm.train.en"),
                             "--validpref", str(text / "lm.valid.en")], threads)


def first_best(nbest: Path) -> List[str]:
    """The top hypothesis (D- text) of each source sentence, in source order."""
    return [lst.hypotheses[0].d_text for lst in parse_nbest(str(nbest))]


def generate(mt_bin: Path, text: Path, checkpoint: Path, subset: str, out: Path, beam: int,
             threads: int, extra: Sequence[str] = ()) -> Path:
    if not out.exists():
        run_fairseq("generate", [str(mt_bin), "--user-dir", USER_DIR, "--path", str(checkpoint),
                                 "--gen-subset", subset, "--beam", str(beam), "--cpu",
                                 "--bpe-codes", str(text / "codes"), *DECODE_ARGS, *extra],
                    threads, out)
    return out


def references(text: Path, split: str) -> List[List[str]]:
    return [(text / f"{split}.ref.en").read_text(encoding="utf-8").splitlines()]


def run_seed(args: argparse.Namespace, text: Path, mt_bin: Path, lm_bin: Path,
             seed: int) -> Dict[str, float]:
    """Train both models with ``seed``, decode test four ways; return test BLEU per decoding
    (also written, with the choices made on val, to ``WORKDIR/seedS/results.json``)."""
    run_dir = args.workdir / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_args = ["--seed", str(seed)]
    mt = train_once(mt_bin, run_dir / "mt",
                    [*MT_ARGS, "--max-update", str(args.mt_max_update), *seed_args], args.threads)
    lm = train_once(lm_bin, run_dir / "lm",
                    [*LM_ARGS, "--max-epoch", str(args.lm_max_epoch), *seed_args], args.threads)

    refs = {split: references(text, split) for split in ("valid", "test")}

    def test_bleu(hypotheses: List[str]) -> float:
        return corpus_bleu(hypotheses, refs["test"])

    nbest = {split: generate(mt_bin, text, mt, split, run_dir / f"{split}.nbest", args.beam,
                             args.threads, ["--nbest", str(args.beam)])
             for split in ("valid", "test")}

    def rerank(output: Path, options: Sequence[str] = ()) -> List[str]:
        if not output.exists():
            from fairseq_awd.rescoring.cli import main as rescore

            rescore(["--nbest", str(nbest["test"]), "--ref", str(text / "test.ref.en"),
                     "--tune-nbest", str(nbest["valid"]), "--tune-ref",
                     str(text / "valid.ref.en"), "--output", str(output), "--lm", str(lm),
                     "--lm-data", str(lm_bin), "--lm-tokenize", "moses", "--lm-bpe-codes",
                     str(text / "codes"), "--cpu", *options])
        return output.read_text(encoding="utf-8").splitlines()

    def fusion(split: str, weight: str) -> Path:
        return generate(mt_bin, text, mt, split, run_dir / f"{split}.fusion{weight}.out",
                        args.beam, args.threads,
                        ["--task", "translation_lm_fusion", "--lm-path", str(lm),
                         "--lm-weight", weight])

    dev = {w: corpus_bleu(first_best(fusion("valid", w)), refs["valid"])
           for w in args.fusion_weights.split(",")}
    dev_beam = corpus_bleu(first_best(nbest["valid"]), refs["valid"])
    weight = max(dev, key=dev.get)
    print(f"seed {seed}: fusion on val: beam {dev_beam:.2f}; " +
          ", ".join(f"weight {w}: {b:.2f}" for w, b in dev.items()) + f"; chosen {weight}",
          flush=True)
    bleu = {
        "beam search": test_bleu(first_best(nbest["test"])),
        "n-best reranking": test_bleu(rerank(run_dir / "test.reranked.en")),
        "shallow fusion": test_bleu(first_best(fusion("test", weight))),
        # the LM's weight held at 0: what length alone gains. Without the LM's summed
        # log-probability to offset, useful length weights are small: a finer grid
        LENGTH_ONLY: test_bleu(rerank(run_dir / "test.length-only.en",
                                      ["--lm-weight-grid", "0",
                                       "--length-weight-grid=-0.2:0.2:0.01"])),
    }
    results = {"seed": seed, "test_bleu": bleu, "fusion_weight": float(weight),
               "fusion_dev_bleu": dev, "dev_beam_bleu": dev_beam}
    (run_dir / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return bleu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path,
                        default=SHARED_DATA / "multi30k",
                        help="Multi30k folder with task1/ and task2/ raw *.gz files")
    parser.add_argument("--workdir", type=Path, default=Path("multi30k-work"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1],
                        help="seeds of both models' training, one run each (WORKDIR/seedS)")
    parser.add_argument("--bpe-merges", type=int, default=8000)
    parser.add_argument("--mt-max-update", type=int, default=900)
    parser.add_argument("--lm-max-epoch", type=int, default=4,
                        help="LM epochs (its val perplexity: 40 after 1, 23 after 4)")
    parser.add_argument("--beam", type=int, default=5, help="beam size; also the n-best size")
    parser.add_argument("--fusion-weights", default="0.1,0.2,0.3",
                        help="shallow-fusion LM weights tried on val")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--limit", type=int, default=None,
                        help="read only the first N lines of every file (a quick smoke run)")
    args = parser.parse_args(argv)

    text, mt_bin, lm_bin = args.workdir / "text", args.workdir / "mt-bin", args.workdir / "lm-bin"
    prepare_text(args.data, text, args.bpe_merges, args.limit)
    binarize(text, mt_bin, lm_bin, args.threads)
    bleu: Dict[str, Dict[int, float]] = {}
    for seed in args.seeds:
        for decoding, value in run_seed(args, text, mt_bin, lm_bin, seed).items():
            bleu.setdefault(decoding, {})[seed] = value

    n_test = len((text / "test.ref.en").read_text(encoding="utf-8").splitlines())
    print(f"\ntest_2016_flickr BLEU (sacrebleu, detokenized, cased), {n_test} sentences:\n")
    print_seed_table("decoding", bleu, args.seeds, digits=2, baseline="beam search")


if __name__ == "__main__":
    install_excepthook()  # bad input as one line
    main()
