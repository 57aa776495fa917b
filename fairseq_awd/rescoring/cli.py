"""``fairseq-awd-rescore``: rerank ``fairseq-generate --nbest N`` output with a language model.

    fairseq-awd-rescore --lm CKPT/checkpoint_best.pt --lm-data DATA-BIN \\
        --tune-nbest dev.nbest --tune-ref dev.en --nbest test.nbest --ref test.en \\
        --output test.reranked.en

See the README's "Rescoring translations (n-best)" for the options.
"""

import argparse
import os
import sys
import tempfile
from typing import List, Optional, Sequence, Tuple

from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.rescoring.lm_scorer import LMScore, LMScorer, load_lm
from fairseq_awd.rescoring.nbest import NBestList, parse_nbest
from fairseq_awd.rescoring.rerank import (
    Features,
    corpus_bleu,
    parse_grid,
    rerank,
    tune_weights,
)
from fairseq_awd.rescoring.text import BPE_MARKER, TextPipeline


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fairseq-awd-rescore",
        description="Rerank fairseq-generate --nbest output with a fairseq_awd language model: "
                    "score = translation score + lm_weight * LM log-prob + "
                    "length_weight * length.",
    )
    p.add_argument("--nbest", required=True, help="fairseq-generate --nbest N output to rerank")
    p.add_argument("--ref", nargs="+", help="reference file(s), one line per source sentence, "
                   "for BLEU (default: the n-best file's T- lines, if any)")
    p.add_argument("--output", required=True, help="where to write the reranked 1-best, "
                   "one line per source sentence in source order")
    p.add_argument("--lm", required=True, help="LM checkpoint file (e.g. CKPT/checkpoint_best.pt)")
    p.add_argument("--lm-data", required=True, help="binarized data directory (dict.txt) the LM "
                   "was trained with")
    p.add_argument("--tune-nbest", help="development n-best list to tune the weights on")
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


def featurize(lists: List[NBestList], raw: List[List[str]], path: str,
              args: argparse.Namespace, pipeline: TextPipeline,
              scorer: LMScorer) -> Tuple[Features, List[List[str]]]:
    """LM-score every hypothesis of ``lists`` (texts ``raw``, from ``hypothesis_texts``);
    return the features and the output texts."""
    outputs = [[pipeline.output_text(t) for t in row] for row in raw]
    words = [[pipeline.lm_words(t) for t in row] for row in outputs]
    lm_texts = [pipeline.apply_lm_bpe(w) for row in words for w in row]
    scores = scorer.score(lm_texts)
    check_unknown_rate(lm_texts, scores, scorer, path, args.max_unk_rate, args.strict)
    tm, lm, length = [], [], []
    k = 0
    for nbest, row in zip(lists, words):
        tm.append([hyp.score_ln for hyp in nbest.hypotheses])
        lm_row = []
        for _ in row:
            s = scores[k]
            lm_row.append(s.logprob / s.num_tokens if args.lm_normalize else s.logprob)
            k += 1
        lm.append(lm_row)
        length.append([len(w.split()) for w in row])
    return Features.from_lists(tm, lm, length), outputs


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


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of ``fairseq-awd-rescore`` (and ``scripts/rescore_nbest.py``)."""
    args = build_parser().parse_args(argv)
    tuning = args.tune_nbest is not None
    if tuning and (args.lm_weight is not None or args.length_weight is not None):
        raise FairseqAWDError("give either --tune-nbest (tuned weights) or --lm-weight and "
                              "--length-weight (fixed weights), not both")
    if not tuning and args.lm_weight is None:
        raise FairseqAWDError("no weights: give --tune-nbest DEV_NBEST --tune-ref DEV_REF to "
                              "tune them, or --lm-weight (and --length-weight)")
    if args.tune_ref and not tuning:
        raise FairseqAWDError("--tune-ref needs --tune-nbest")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    for option, paths in (("--nbest", [args.nbest]), ("--tune-nbest", [args.tune_nbest]),
                          ("--ref", args.ref), ("--tune-ref", args.tune_ref), ("--lm", [args.lm])):
        for path in paths or []:
            if path is not None and same_file(args.output, path):
                raise FairseqAWDError(f"--output {args.output} is the {option} file {path}: "
                                      "writing it would destroy the input; give another file")
    if not os.path.isdir(out_dir):
        raise FairseqAWDError(f"--output: directory {out_dir} does not exist")
    if not 0.0 <= args.max_unk_rate <= 1.0:
        raise FairseqAWDError(f"--max-unk-rate must be in [0, 1], got {args.max_unk_rate}")
    lm_grid = parse_grid(args.lm_weight_grid, "--lm-weight-grid")
    length_grid = parse_grid(args.length_weight_grid, "--length-weight-grid")
    if args.detokenize == "auto":
        args.detokenize = "moses" if args.source_text == "H" else "none"

    test_lists = parse_nbest(args.nbest)
    test_refs = read_references(args.ref, test_lists, "--ref", args.nbest)
    if tuning:
        dev_lists = parse_nbest(args.tune_nbest)
        dev_refs = read_references(args.tune_ref, dev_lists, "--tune-ref", args.tune_nbest)
        if dev_refs is None:
            raise FairseqAWDError(f"--tune-nbest {args.tune_nbest} has no T- lines: give "
                                  "--tune-ref")
    # refuse leftover BPE markers or missing D- lines before loading the LM
    test_raw = hypothesis_texts(test_lists, args.nbest, args.source_text, args.remove_bpe)
    if tuning:
        dev_raw = hypothesis_texts(dev_lists, args.tune_nbest, args.source_text, args.remove_bpe)
    pipeline = TextPipeline(args.lang, bpe_removal=args.remove_bpe,
                            detokenize=args.detokenize == "moses", lm_tokenize=args.lm_tokenize,
                            lm_lowercase=args.lm_lowercase, lm_bpe_codes=args.lm_bpe_codes)
    scorer = LMScorer(load_lm(args.lm, args.lm_data, cpu=args.cpu), args.batch_size)

    if tuning:
        dev_features, dev_outputs = featurize(dev_lists, dev_raw, args.tune_nbest, args, pipeline,
                                            scorer)
        lm_weight, length_weight, dev_bleu = tune_weights(
            dev_features, dev_outputs, dev_refs, lm_grid, length_grid)
        dev_base = corpus_bleu([row[0] for row in dev_outputs], dev_refs)
        print(f"tuned on {args.tune_nbest}: lm_weight {lm_weight:g} length_weight "
              f"{length_weight:g}: BLEU {dev_base:.2f} -> {dev_bleu:.2f}")
    else:
        lm_weight, length_weight = args.lm_weight, args.length_weight or 0.0

    features, outputs = featurize(test_lists, test_raw, args.nbest, args, pipeline, scorer)
    choice = rerank(features, lm_weight, length_weight)
    reranked = [row[j] for row, j in zip(outputs, choice)]
    write_atomic(args.output, reranked)
    moved = sum(j != 0 for j in choice)
    print(f"reranked {len(reranked)} sentences with lm_weight {lm_weight:g} length_weight "
          f"{length_weight:g}; {moved} changed their 1-best; wrote {args.output}")
    if test_refs is not None:
        before = corpus_bleu([row[0] for row in outputs], test_refs)
        after = corpus_bleu(reranked, test_refs)
        print(f"BLEU translation 1-best {before:.2f}")
        print(f"BLEU reranked {after:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
