"""Multi30k German->English: beam search, n-best reranking with an AWD-LSTM and a noisy
channel, and shallow fusion, scored on the three standard test sets.

Usage:
    python scripts/multi30k_rescoring.py [--data ../shared/data/multi30k] [--workdir multi30k-work]
        [--seeds 1 2 3] [--mt-max-update 900] [--lm-max-epoch 4] [--beam 12] [--threads N]

Steps (each is skipped when its output exists, so an interrupted run resumes, and a run
with more seeds reuses the prepared data and the seeds already done):
1. Moses-tokenize (sacremoses, cased, no escaping) and BPE-segment (subword-nmt, codes
   learned jointly on task-1 train German+English) task 1 train / val / test_2016_flickr /
   test_2017_flickr / test_2017_mscoco and the task-2 English captions: train.1-5 (training
   images only) for the LM, val.1 for its validation. No task-2 test caption is read.
2. Binarize: the translation data with separate dictionaries, the LM corpus with
   ``--srcdict`` = the translation model's English dictionary (needed for fusion).
3. Per seed, train a small de->en transformer, the same transformer en->de (the noisy
   channel, on the same binarized pairs) and an AWD-LSTM LM. Every fairseq process runs on
   one thread, whatever ``--threads`` (which sets how many run side by side), so a seed
   gives the same models on any machine.
4. Per seed, in WORKDIR/seedS: decode val and the test sets with beam search (``--nbest`` =
   beam); tune each reranker's weights on val alone (``fairseq-awd-rescore --smooth-tuning``,
   written to ``weights.NAME.json``) and apply them, fixed, to every test set; decode with
   incremental shallow fusion (``--task translation_lm_fusion``, weight picked on val).
   Write results.json: BLEU, sacrebleu's paired-bootstrap p-value against beam search and
   the hypothesis/reference length ratio of every decoding on every test set, and the
   weights.
Then:
5. Print, per test set, sacrebleu BLEU (detokenized, cased): a column per seed, the mean +-
   sd over seeds, the gain over beam search as mean +- sd and each seed's p-value; then the
   length ratios.
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
    run_module,
    run_parallel,
    train_once,
    write_lines,
)

from fairseq_awd.errors import FairseqAWDError, install_excepthook  # noqa: E402
from fairseq_awd.rescoring.nbest import parse_nbest  # noqa: E402
from fairseq_awd.rescoring.rerank import corpus_bleu, length_ratio, paired_bootstrap  # noqa: E402

# fairseq subset -> task-1 file stem ({stem}.{de,en}.gz); "test", "test1", ... are the names
# fairseq-preprocess gives the files of a comma-separated --testpref
TEST_SETS = {"test": "test_2016_flickr", "test1": "test_2017_flickr",
             "test2": "test_2017_mscoco"}
MT_SPLITS = {"train": "train", "valid": "val", **TEST_SETS}
LM_TRAIN = [f"train.{i}.en.gz" for i in range(1, 6)]
LM_VALID = ["val.1.en.gz"]
BEAM = "beam search"
FUSION = "incremental fusion"
LENGTH_ONLY = "ablation: length only"
# The rerankers: name -> (file stem, fairseq-awd-rescore options; "CHANNEL" is replaced by
# the seed's channel options). Per-token LM and channel scores (Yee et al. 2019) and a length
# feature tied to the source length, so that no weight rewards length as such.
SOURCE_GAP = ["--length-feature", "source-gap", "--length-weight-grid", "0:0.3:0.02"]
LM_PER_TOKEN = ["--lm-normalize", "--lm-weight-grid", "0:2:0.1"]
RERANKERS = {
    "LM reranking": ("lm", [*LM_PER_TOKEN, *SOURCE_GAP]),
    "noisy-channel reranking": ("channel", [*LM_PER_TOKEN, *SOURCE_GAP, "CHANNEL"]),
    LENGTH_ONLY: ("length", ["--lm-weight-grid", "0", *SOURCE_GAP]),
    # the previous recipe's reranker: total LM log-probability plus a bonus per word
    "old: LM + word bonus": ("wordbonus", ["--lm-weight-grid", "0:2:0.05",
                                           "--length-weight-grid=-1:1:0.1"]),
}
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
    splits = ["--trainpref", str(text / "train"), "--validpref", str(text / "valid"),
              "--testpref", ",".join(str(text / name) for name in TEST_SETS)]
    preprocess_once(mt_bin, ["--source-lang", "de", "--target-lang", "en", *splits], threads)
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


def train_models(args: argparse.Namespace, mt_bin: Path, lm_bin: Path) -> Dict[int, dict]:
    """Every seed's translation model, channel and LM, as many side by side as ``--threads``
    allows, each on one thread. Returns seed -> {"mt", "channel", "lm"} checkpoints."""
    def job(seed: int, model: str):
        run_dir = args.workdir / f"seed{seed}"
        options = {
            "mt": (mt_bin, [*MT_ARGS, "--max-update", str(args.mt_max_update)]),
            "channel": (mt_bin, [*MT_ARGS, "--source-lang", "en", "--target-lang", "de",
                                 "--max-update", str(args.mt_max_update)]),
            "lm": (lm_bin, [*LM_ARGS, "--max-epoch", str(args.lm_max_epoch)]),
        }[model]
        return lambda _threads: train_once(options[0], run_dir / model,
                                           [*options[1], "--seed", str(seed)], 1)

    # Longest first over all seeds (an LM takes ~1.5x a translation model), so that the
    # side-by-side slots finish close together.
    jobs = [(seed, model) for model in ("lm", "mt", "channel") for seed in args.seeds]
    paths = run_parallel([job(seed, model) for seed, model in jobs], args.threads)
    models: Dict[int, dict] = {}
    for (seed, model), path in zip(jobs, paths):
        models.setdefault(seed, {})[model] = path
    return models


def run_seed(args: argparse.Namespace, text: Path, mt_bin: Path, lm_bin: Path, seed: int,
             models: dict) -> dict:
    """Decode val and the test sets every way with this seed's models, on one thread; return
    (and write to ``WORKDIR/seedS/results.json``) BLEU, p-values and length ratios per test
    set and decoding, and the weights chosen on val."""
    run_dir = args.workdir / f"seed{seed}"
    refs = {split: references(text, split) for split in ("valid", *TEST_SETS)}
    nbest = {split: generate(mt_bin, text, models["mt"], split, run_dir / f"{split}.nbest",
                             args.beam, 1, ["--nbest", str(args.beam)])
             for split in ("valid", *TEST_SETS)}
    channel = ["--channel", str(models["channel"]), "--channel-data", str(mt_bin),
               "--channel-normalize", "--channel-weight-grid", "0:2:0.1"]

    def rescore(split: str, output: Path, options: Sequence[str]) -> List[str]:
        if not output.exists():
            run_module("fairseq_awd.rescoring.cli", [
                "--nbest", str(nbest[split]), "--ref", str(text / f"{split}.ref.en"),
                "--output", str(output), "--lm", str(models["lm"]), "--lm-data", str(lm_bin),
                "--lm-tokenize", "moses", "--lm-bpe-codes", str(text / "codes"), "--cpu",
                *options], 1, output.with_suffix(".log"), name="fairseq-awd-rescore")
        return output.read_text(encoding="utf-8").splitlines()

    outputs: Dict[str, Dict[str, List[str]]] = {
        split: {BEAM: first_best(nbest[split])} for split in TEST_SETS}
    weights = {}
    first, *others = TEST_SETS
    for name, (stem, options) in RERANKERS.items():
        options = [x for o in options for x in (channel if o == "CHANNEL" else [o])]
        record = run_dir / f"weights.{stem}.json"
        # Tuned on val alone, in the run that reranks the first test set (the rescorer refuses
        # to rerank the list it tunes on); the other test sets get the weights fixed.
        outputs[first][name] = rescore(first, run_dir / f"{first}.{stem}.en", [
            *options, "--tune-nbest", str(nbest["valid"]), "--tune-ref",
            str(text / "valid.ref.en"), "--smooth-tuning", "--weights-out", str(record)])
        weights[name] = json.loads(record.read_text(encoding="utf-8"))
        fixed = [f"--{feature}-weight={w}" for feature, w in weights[name]["weights"].items()]
        if weights[name]["length_feature"] == "source-gap":
            fixed.append(f"--length-ratio={weights[name]['length_ratio']}")
        for split in others:
            outputs[split][name] = rescore(split, run_dir / f"{split}.{stem}.en",
                                           [*options, *fixed])

    def fusion(split: str, weight: str) -> Path:
        return generate(mt_bin, text, models["mt"], split, run_dir / f"{split}.fusion{weight}.out",
                        args.beam, 1, ["--task", "translation_lm_fusion", "--lm-path",
                                       str(models["lm"]), "--lm-weight", weight])

    dev = {w: corpus_bleu(first_best(fusion("valid", w)), refs["valid"])
           for w in args.fusion_weights.split(",")}
    fusion_weight = max(dev, key=dev.get)
    for split in TEST_SETS:
        outputs[split][FUSION] = first_best(fusion(split, fusion_weight))

    results = {"seed": seed, "bleu": {}, "p_value": {}, "length_ratio": {},
               "weights": weights, "fusion_weight": float(fusion_weight),
               "fusion_dev_bleu": dev,
               "dev_beam_bleu": corpus_bleu(first_best(nbest["valid"]), refs["valid"])}
    for split, by_decoding in outputs.items():
        name = TEST_SETS[split]
        results["bleu"][name] = {d: corpus_bleu(h, refs[split]) for d, h in by_decoding.items()}
        results["length_ratio"][name] = {d: length_ratio(h, refs[split])
                                         for d, h in by_decoding.items()}
        others = {d: h for d, h in by_decoding.items() if d != BEAM}
        results["p_value"][name] = paired_bootstrap(by_decoding[BEAM], others, refs[split])
    write_lines(run_dir / "results.json", [json.dumps(results, indent=1)])
    return results


def print_tables(results: Dict[int, dict], seeds: Sequence[int], sizes: Dict[str, int]) -> None:
    """Per test set: BLEU per seed, mean +- sd, gain over beam search, p-values; then the
    hypothesis/reference length ratios (mean over seeds)."""
    first = results[seeds[0]]
    for name in TEST_SETS.values():
        decodings = list(first["bleu"][name])
        rows = {d: {s: results[s]["bleu"][name][d] for s in seeds} for d in decodings}
        p_values = {d: " / ".join(f"{results[s]['p_value'][name][d]:.3f}" for s in seeds)
                    for d in decodings if d != BEAM}
        print(f"\n{name} BLEU (sacrebleu, detokenized, cased), {sizes[name]} sentences; "
              "p: paired bootstrap against beam search, per seed:\n")
        print_seed_table("decoding", rows, seeds, digits=2, baseline=BEAM,
                         notes=("p", p_values))
    print("\nHypothesis / reference length (sacrebleu), mean over seeds:\n")
    names = list(TEST_SETS.values())
    print("| decoding | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for d in first["bleu"][names[0]]:
        cells = [sum(results[s]["length_ratio"][n][d] for s in seeds) / len(seeds)
                 for n in names]
        print(f"| {d} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")


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
    parser.add_argument("--beam", type=int, default=12, help="beam size; also the n-best size")
    parser.add_argument("--fusion-weights", default="0.1,0.2,0.3,0.4",
                        help="shallow-fusion LM weights tried on val")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="fairseq processes side by side (each on one thread)")
    parser.add_argument("--limit", type=int, default=None,
                        help="read only the first N lines of every file (a quick smoke run)")
    args = parser.parse_args(argv)

    if args.beam < 1:
        parser.error("--beam must be positive")
    text, mt_bin, lm_bin = args.workdir / "text", args.workdir / "mt-bin", args.workdir / "lm-bin"
    prepare_text(args.data, text, args.bpe_merges, args.limit)
    binarize(text, mt_bin, lm_bin, args.threads)
    models = train_models(args, mt_bin, lm_bin)
    per_seed = run_parallel([lambda _t, s=s: run_seed(args, text, mt_bin, lm_bin, s, models[s])
                             for s in args.seeds], args.threads)
    results = dict(zip(args.seeds, per_seed))
    sizes = {name: len((text / f"{split}.ref.en").read_text(encoding="utf-8").splitlines())
             for split, name in TEST_SETS.items()}
    print_tables(results, args.seeds, sizes)


if __name__ == "__main__":
    install_excepthook()  # bad input as one line
    main()
