"""``fairseq-awd-rescore``: rerank ``fairseq-generate --nbest N`` output with a language model.

    fairseq-awd-rescore --lm CKPT/checkpoint_best.pt --lm-data DATA-BIN \\
        --tune-nbest dev.nbest --tune-ref dev.en --nbest test.nbest --ref test.en \\
        --output test.reranked.en

See the README's "Rescoring translations (n-best)" for the options.
"""

import argparse
import json
import os
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.grid import GRID_BOUNDS, check_finite, check_grid_combinations, parse_grid
from fairseq_awd.rescoring.channel_scorer import ChannelScorer
from fairseq_awd.rescoring.lm_scorer import LMScore, LMScorer, load_lm
from fairseq_awd.rescoring.nbest import NBestList, parse_nbest
from fairseq_awd.rescoring.rerank import (
    Features,
    corpus_bleu,
    rerank,
    source_length_gap,
    tune_weights,
)
from fairseq_awd.rescoring.text import BPE_MARKER, TextPipeline, remove_bpe

WEIGHTS = ("lm", "length", "channel")  # the features' names; options --NAME-weight(-grid)
# the options that are plain numbers, with the fix named when one is NaN or infinite
NUMBERS = {"lm_weight": "give a finite weight such as 0.5, or tune it with --tune-nbest",
           "length_weight": "give a finite weight such as 0.1, or tune it with --tune-nbest",
           "channel_weight": "give a finite weight such as 0.5, or tune it with --tune-nbest",
           "length_ratio": "give the expected target/source word ratio, e.g. 1.1",
           "max_unk_rate": "give a fraction in [0, 1], e.g. 0.2"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fairseq-awd-rescore",
        description="Rerank fairseq-generate --nbest output with a fairseq_awd language model "
                    "(and a noisy channel): score = translation score + lm_weight * LM log-prob "
                    "+ length_weight * length feature + channel_weight * log p(source | "
                    "hypothesis).",
        epilog=f"Tuning tries every combination of the --*-weight-grid values: {GRID_BOUNDS}.",
    )
    p.add_argument("--nbest", required=True, help="fairseq-generate --nbest N output to rerank")
    p.add_argument("--ref", nargs="+", help="reference file(s), one line per source sentence, "
                   "for BLEU (default: the n-best file's T- lines, if any)")
    p.add_argument("--output", required=True, help="where to write the reranked 1-best, "
                   "one line per source sentence in source order")
    p.add_argument("--lm", required=True, help="LM checkpoint file (e.g. CKPT/checkpoint_best.pt)")
    p.add_argument("--lm-data", required=True, help="binarized data directory (dict.txt) the LM "
                   "was trained with")
    p.add_argument("--tune-nbest", help="development n-best list to tune the weights on "
                   "(another split than --nbest: a list is not reported on its own tuning)")
    p.add_argument("--tune-ref", nargs="+", help="references of --tune-nbest "
                   "(default: its T- lines)")
    p.add_argument("--lm-weight", type=float, help="fixed LM weight (lambda) instead of tuning")
    p.add_argument("--length-weight", type=float, help="fixed length weight (mu); default 0 "
                   "with --lm-weight")
    p.add_argument("--lm-weight-grid", default="0:2:0.05",
                   help="lambda values tried by tuning: START:STOP:STEP or a,b,c")
    p.add_argument("--length-weight-grid", default="-1:1:0.1",
                   help="mu values tried by tuning: START:STOP:STEP or a,b,c")
    p.add_argument("--lm-normalize", action="store_true",
                   help="use the LM's per-token log-prob (</s> included) instead of the total")
    p.add_argument("--length-feature", choices=("words", "source-gap"), default="words",
                   help="words: the hypothesis' word count; source-gap: -|words - ratio * "
                   "source words|, a penalty for straying from the length its source implies")
    p.add_argument("--length-ratio", type=float, help="source-gap's expected target/source word "
                   "ratio (default: measured on the tuning set's references and sources)")
    p.add_argument("--channel", help="noisy channel: checkpoint of a translation model trained in "
                   "the reverse direction (target -> source language)")
    p.add_argument("--channel-data", help="binarized data directory of --channel (its two "
                   "dictionaries)")
    p.add_argument("--channel-weight", type=float, help="fixed channel weight instead of tuning; "
                   "default 0 with --lm-weight")
    p.add_argument("--channel-weight-grid", default="0:1:0.1",
                   help="channel weights tried by tuning: START:STOP:STEP or a,b,c")
    p.add_argument("--channel-normalize", action="store_true",
                   help="use the channel's per-token log p(x|y) (per source token, </s> "
                   "included) instead of the total")
    p.add_argument("--smooth-tuning", action="store_true",
                   help="judge each grid point by the mean BLEU of itself and its neighbours")
    p.add_argument("--weights-out", help="write the weights used (and what tuning saw) to this "
                   "JSON file")
    p.add_argument("--source-text", choices=("D", "H"), default="D",
                   help="hypothesis text to use: D- lines (decoded with fairseq's --bpe and "
                   "--tokenizer; default) or H- lines (tokens, after --remove-bpe if given)")
    p.add_argument("--remove-bpe", action="store_true",
                   help=f"strip subword-nmt '{BPE_MARKER.strip()} ' markers from the hypotheses")
    p.add_argument("--detokenize", choices=("auto", "moses", "none"), default="auto",
                   help="Moses-detokenize the hypotheses for output and BLEU (auto: moses for "
                   "--source-text H, none for D)")
    p.add_argument("--lang", default="en", help="target language for sacremoses (default en)")
    p.add_argument("--lm-tokenize", choices=("moses", "none"), default="moses",
                   help="how to tokenize the output text for the LM (as its training text was)")
    p.add_argument("--lm-lowercase", action="store_true", help="lowercase the text for the LM")
    p.add_argument("--lm-bpe-codes", help="subword-nmt codes the LM's training text was "
                   "segmented with")
    p.add_argument("--max-unk-rate", type=float, default=0.2,
                   help="refuse to score when more than this fraction of the LM tokens is <unk>")
    p.add_argument("--strict", action="store_true", help="refuse any <unk> token")
    p.add_argument("--batch-size", type=int, default=64, help="hypotheses per LM forward")
    p.add_argument("--cpu", action="store_true", help="run the LM on the CPU even with CUDA")
    p.add_argument("--bf16", action="store_true", help="score with the LM and the channel "
                   "model in bfloat16 (their matrix products; log-probabilities and sums stay "
                   "float32): faster on CPUs with AVX512-BF16 or AMX")
    return p


def read_references(paths: Optional[Sequence[str]], lists: List[NBestList], option: str,
                    nbest_path: str) -> Optional[List[List[str]]]:
    """Reference streams for ``lists``: the files given, else the T- lines, else None."""
    if not paths:
        if all(nbest.target is not None for nbest in lists):
            return [[nbest.target for nbest in lists]]
        return None
    streams = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                lines = [line.rstrip("\n") for line in f]
        except OSError as err:
            raise FairseqAWDError(f"{option}: cannot read {path}: {err.strerror}") from None
        if len(lines) != len(lists):
            raise FairseqAWDError(f"{option}: {path} has {len(lines)} lines but {nbest_path} "
                                  f"has {len(lists)} source sentences")
        streams.append(lines)
    return streams


def hypothesis_texts(lists: List[NBestList], path: str, source_text: str,
                     remove_bpe: bool) -> List[List[str]]:
    """The chosen text (D or H) of every hypothesis; refuses leftover BPE markers."""
    texts = []
    for nbest in lists:
        row = []
        for hyp in nbest.hypotheses:
            text = hyp.d_text if source_text == "D" else hyp.h_text
            if text is None:
                raise FairseqAWDError(f"{path}:{hyp.line}: H- line without a D- line (the file "
                                      "has none); use --source-text H")
            if not remove_bpe and BPE_MARKER in text + " ":
                raise FairseqAWDError(
                    f"{path}:{hyp.line}: the hypothesis still has subword-nmt '@@ ' markers; "
                    "pass --remove-bpe (or run fairseq-generate with --bpe subword_nmt or "
                    "--remove-bpe)")
            row.append(text)
        texts.append(row)
    return texts


def require_sources(lists: List[NBestList], path: str) -> None:
    """Refuse lists without S- lines, which --length-feature source-gap and --channel read."""
    missing = [nbest.id for nbest in lists if nbest.source is None]
    if missing:
        raise FairseqAWDError(f"{path}: source id {missing[0]} has no S- line: "
                              "--length-feature source-gap and --channel read the source "
                              "sentences (run fairseq-generate without --quiet)")


def source_words(lists: List[NBestList]) -> List[int]:
    """Words of each source sentence (its S- line, BPE removed)."""
    return [len(remove_bpe(nbest.source).split()) for nbest in lists]


def measured_length_ratio(lists: List[NBestList], references: List[List[str]],
                          pipeline: TextPipeline) -> float:
    """Reference words per source word over a corpus (the first reference stream), the
    words counted as for the hypotheses."""
    ref_words = sum(len(pipeline.lm_words(ref).split()) for ref in references[0])
    return ref_words / max(1, sum(source_words(lists)))


def channel_feature(lists: List[NBestList], path: str, channel: ChannelScorer,
                    args: argparse.Namespace) -> List[List[float]]:
    """``log p(x | y)`` of every hypothesis ``y`` (its H- tokens) and source ``x`` (its S-
    tokens), total or per source token with ``--channel-normalize``."""
    pairs = [(nbest.source, hyp.h_text) for nbest in lists for hyp in nbest.hypotheses]
    scores = channel.score([x for x, _ in pairs], [y for _, y in pairs])
    unk = sum(s.num_unk for s in scores)
    total = sum(len(x.split()) + len(y.split()) for x, y in pairs)
    if unk > args.max_unk_rate * max(1, total):
        src, tgt = channel.directions
        raise FairseqAWDError(
            f"--channel: {unk} of {total} tokens of {path} ({unk / max(1, total):.1%}) are "
            f"<unk> in the channel model's dictionaries ({src}->{tgt}; --max-unk-rate is "
            f"{args.max_unk_rate:g}): give the model trained in the reverse direction on the "
            "same binarized data, and n-best lists whose H- lines keep the BPE (fairseq-"
            "generate without --remove-bpe/--post-process)")
    values = iter(s.logprob / s.num_tokens if args.channel_normalize else s.logprob
                  for s in scores)
    return [[next(values) for _ in nbest.hypotheses] for nbest in lists]


def featurize(lists: List[NBestList], raw: List[List[str]], path: str,
              args: argparse.Namespace, pipeline: TextPipeline, scorer: LMScorer,
              channel: Optional[ChannelScorer] = None,
              length_ratio: Optional[float] = None) -> Tuple[Features, List[List[str]]]:
    """Score every hypothesis of ``lists`` (texts ``raw``, from ``hypothesis_texts``) with
    the LM (and the channel); return the features and the output texts."""
    outputs = [[pipeline.output_text(t) for t in row] for row in raw]
    lm_words = [[pipeline.lm_words(t) for t in row] for row in outputs]
    words = [[len(w.split()) for w in row] for row in lm_words]
    lm_texts = [pipeline.apply_lm_bpe(w) for row in lm_words for w in row]
    lm_scores = scorer.score(lm_texts)
    check_unknown_rate(lm_texts, lm_scores, scorer, path, args.max_unk_rate, args.strict)
    values = iter(s.logprob / s.num_tokens if args.lm_normalize else s.logprob
                  for s in lm_scores)
    tm = [[hyp.score_ln for hyp in nbest.hypotheses] for nbest in lists]
    lm = [[next(values) for _ in row] for row in words]
    if args.length_feature == "source-gap":
        length = [[source_length_gap(n, m, length_ratio) for n in row]
                  for row, m in zip(words, source_words(lists))]
    else:
        length = words
    named = {"lm": lm, "length": length}
    if channel is not None:
        named["channel"] = channel_feature(lists, path, channel, args)
    return Features.from_lists(tm, **named), outputs


def check_unknown_rate(lm_texts: List[str], scores: List[LMScore], scorer: LMScorer, path: str,
                       max_rate: float, strict: bool) -> None:
    """Refuse to rerank when the LM's dictionary does not cover the hypotheses' tokens."""
    unk = sum(s.num_unk for s in scores)
    total = sum(len(t.split()) for t in lm_texts)
    if total == 0 or unk == 0 or (not strict and unk <= max_rate * total):
        return
    unk_id = scorer.dictionary.unk()
    examples = []
    for text in lm_texts:
        for word in text.split():
            if scorer.dictionary.index(word) == unk_id and word not in examples:
                examples.append(word)
        if len(examples) >= 5:
            break
    limit = "--strict allows none" if strict else f"--max-unk-rate is {max_rate:g}"
    raise FairseqAWDError(
        f"vocabulary mismatch: {unk} of {total} LM tokens ({unk / total:.1%}) in {path} are "
        f"<unk> in the LM's dictionary ({limit}), e.g. {', '.join(map(repr, examples[:5]))}; "
        "prepare the text as the LM's training text was (--lm-tokenize, --lm-lowercase, "
        "--lm-bpe-codes, --source-text/--remove-bpe) or use an LM trained on matching text")


def tuned_on_reported_error(what: str) -> FairseqAWDError:
    """The refusal of tuning the weights on the n-best list that is reranked and reported."""
    return FairseqAWDError(
        f"--tune-nbest and --nbest are the same n-best list ({what}): weights tuned on the "
        "list they rerank overstate its BLEU; tune on another split (e.g. --tune-nbest "
        "valid.nbest --nbest test.nbest)")


def check_distinct_tuning_set(test_lists: List[NBestList], dev_lists: List[NBestList],
                              test_path: str, dev_path: str) -> None:
    """Refuse a tuning list with the same sources and hypotheses as the reranked one (a copy
    of it; the same file is refused by ``check_options`` before it is read)."""
    def content(lists: List[NBestList]) -> list:
        return [(n.source, [h.h_text for h in n.hypotheses]) for n in lists]

    if content(test_lists) == content(dev_lists):
        raise tuned_on_reported_error(f"{dev_path} has the sources and hypotheses of "
                                      f"{test_path}")


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one file (symbolic and hard links included)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def write_atomic(path: str, lines: List[str]) -> None:
    """Write ``lines`` to ``path`` through a temporary file and ``os.replace``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the mode open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_options(args: argparse.Namespace) -> bool:
    """Refuse contradictory, incomplete or non-finite options (one line each); return
    whether the weights are tuned."""
    for option, fix in NUMBERS.items():
        if getattr(args, option) is not None:
            check_finite(getattr(args, option), f"--{option.replace('_', '-')}", fix)
    tuning = args.tune_nbest is not None
    fixed = [f"--{name}-weight" for name in WEIGHTS if getattr(args, f"{name}_weight") is not None]
    if tuning and fixed:
        raise FairseqAWDError(f"give either --tune-nbest (tuned weights) or fixed weights "
                              f"({', '.join(fixed)}), not both")
    if not tuning and args.lm_weight is None:
        raise FairseqAWDError("no weights: give --tune-nbest DEV_NBEST --tune-ref DEV_REF to "
                              "tune them, or --lm-weight (and --length-weight)")
    if args.tune_ref and not tuning:
        raise FairseqAWDError("--tune-ref needs --tune-nbest")
    if tuning and same_file(args.nbest, args.tune_nbest):
        raise tuned_on_reported_error(args.tune_nbest)
    if (args.channel is None) != (args.channel_data is None):
        raise FairseqAWDError("--channel and --channel-data go together: the reverse model's "
                              "checkpoint and its binarized data directory")
    if args.channel is None and (args.channel_weight is not None or args.channel_normalize):
        raise FairseqAWDError("--channel-weight/--channel-normalize need --channel")
    if args.length_ratio is not None and (args.length_feature != "source-gap"
                                          or args.length_ratio <= 0):
        raise FairseqAWDError("--length-ratio is source-gap's expected ratio: a positive "
                              "number, with --length-feature source-gap")
    if args.length_feature == "source-gap" and not tuning and args.length_ratio is None:
        raise FairseqAWDError("--length-feature source-gap with fixed weights needs "
                              "--length-ratio (or --tune-nbest, to measure it)")
    for option, paths in (("--nbest", [args.nbest]), ("--tune-nbest", [args.tune_nbest]),
                          ("--ref", args.ref), ("--tune-ref", args.tune_ref), ("--lm", [args.lm]),
                          ("--channel", [args.channel]), ("--weights-out", [args.weights_out])):
        for path in paths or []:
            if path is not None and same_file(args.output, path):
                raise FairseqAWDError(f"--output {args.output} is the {option} file {path}: "
                                      "writing it would destroy the input; give another file")
    for option, path in (("--output", args.output), ("--weights-out", args.weights_out)):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder is not None and not os.path.isdir(folder):
            raise FairseqAWDError(f"{option}: directory {folder} does not exist")
    if not 0.0 <= args.max_unk_rate <= 1.0:
        raise FairseqAWDError(f"--max-unk-rate must be in [0, 1], got {args.max_unk_rate}")
    return tuning


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of ``fairseq-awd-rescore`` (and ``python -m fairseq_awd.rescoring.cli``)."""
    args = build_parser().parse_args(argv)
    tuning = check_options(args)
    names = [n for n in WEIGHTS if n != "channel" or args.channel is not None]
    grids = {n: parse_grid(getattr(args, f"{n}_weight_grid"), f"--{n}-weight-grid")
             for n in names}
    if tuning:
        check_grid_combinations({f"--{n}-weight-grid": grids[n] for n in names})
    if args.detokenize == "auto":
        args.detokenize = "moses" if args.source_text == "H" else "none"

    test_lists = parse_nbest(args.nbest)
    test_refs = read_references(args.ref, test_lists, "--ref", args.nbest)
    if tuning:
        dev_lists = parse_nbest(args.tune_nbest)
        check_distinct_tuning_set(test_lists, dev_lists, args.nbest, args.tune_nbest)
        dev_refs = read_references(args.tune_ref, dev_lists, "--tune-ref", args.tune_nbest)
        if dev_refs is None:
            raise FairseqAWDError(f"--tune-nbest {args.tune_nbest} has no T- lines: give "
                                  "--tune-ref")
    # refuse leftover BPE markers or missing D-/S- lines before loading the LM
    test_raw = hypothesis_texts(test_lists, args.nbest, args.source_text, args.remove_bpe)
    if tuning:
        dev_raw = hypothesis_texts(dev_lists, args.tune_nbest, args.source_text, args.remove_bpe)
    if args.channel or args.length_feature == "source-gap":
        require_sources(test_lists, args.nbest)
        if tuning:
            require_sources(dev_lists, args.tune_nbest)
    pipeline = TextPipeline(args.lang, bpe_removal=args.remove_bpe,
                            detokenize=args.detokenize == "moses", lm_tokenize=args.lm_tokenize,
                            lm_lowercase=args.lm_lowercase, lm_bpe_codes=args.lm_bpe_codes)
    length_ratio = args.length_ratio
    if args.length_feature == "source-gap" and length_ratio is None:
        length_ratio = measured_length_ratio(dev_lists, dev_refs, pipeline)
    scorer = LMScorer(load_lm(args.lm, args.lm_data, cpu=args.cpu, bf16=args.bf16),
                      args.batch_size)
    channel = (ChannelScorer(args.channel, args.channel_data, cpu=args.cpu,
                             batch_size=args.batch_size, bf16=args.bf16)
               if args.channel else None)
    record: Dict[str, object] = {"length_feature": args.length_feature,
                                 "length_ratio": length_ratio}

    if tuning:
        dev_features, dev_outputs = featurize(dev_lists, dev_raw, args.tune_nbest, args, pipeline,
                                            scorer, channel, length_ratio)
        weights, dev_bleu, objective = tune_weights(dev_features, dev_outputs, dev_refs, grids,
                                                    smooth=args.smooth_tuning)
        dev_base = corpus_bleu([row[0] for row in dev_outputs], dev_refs)
        smoothed = f" (smoothed {objective:.2f})" if args.smooth_tuning else ""
        print(f"tuned on {args.tune_nbest}: {describe(weights)}: BLEU {dev_base:.2f} -> "
              f"{dev_bleu:.2f}{smoothed}")
        record.update(tune_bleu_before=dev_base, tune_bleu=dev_bleu, tune_objective=objective)
    else:
        weights = {n: getattr(args, f"{n}_weight") or 0.0 for n in names}
    record["weights"] = weights

    features, outputs = featurize(test_lists, test_raw, args.nbest, args, pipeline, scorer,
                                  channel, length_ratio)
    choice = rerank(features, weights)
    reranked = [row[j] for row, j in zip(outputs, choice)]
    if args.weights_out:
        write_atomic(args.weights_out, [json.dumps(record, indent=1)])
    write_atomic(args.output, reranked)
    moved = sum(j != 0 for j in choice)
    print(f"reranked {len(reranked)} sentences with {describe(weights)}; {moved} changed "
          f"their 1-best; wrote {args.output}")
    if test_refs is not None:
        before = corpus_bleu([row[0] for row in outputs], test_refs)
        after = corpus_bleu(reranked, test_refs)
        print(f"BLEU translation 1-best {before:.2f}")
        print(f"BLEU reranked {after:.2f}")
    sys.stdout.flush()


def describe(weights: Dict[str, float]) -> str:
    return " ".join(f"{name}_weight {weight:g}" for name, weight in weights.items())


if __name__ == "__main__":
    main()
