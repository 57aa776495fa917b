"""Parse ``fairseq-generate --nbest N`` output into one n-best list per source sentence.

fairseq-generate prints, per source id, ``S-`` (source) and ``T-`` (reference) lines, then
per hypothesis an ``H-`` line (score, hypothesis after ``--post-process``/``--remove-bpe``
if given), a ``D-`` line (score, the H text decoded with ``--bpe``/``--tokenizer``) and a
``P-`` line (per-token scores, ``</s>`` included). Scores are in base 2; ``H``'s is the
length-normalized log-probability ``sum / len**lenpen``. Ids come out of order (batches
are sorted by length); the lists returned here are in source order.
"""

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.grid import check_finite

_TAGGED = re.compile(r"^([SHDPT])-([^\t]*)\t")


@dataclass
class Hypothesis:
    """One hypothesis of an n-best list, in the order fairseq printed it (``rank``)."""

    rank: int
    score: float  # as printed: base-2 log-probability, length-normalized by fairseq
    h_text: str
    d_text: Optional[str] = None
    positional_scores: Optional[List[float]] = None  # base 2, one per token and </s>
    line: int = 0  # line number of the H- line (1-based)

    @property
    def score_ln(self) -> float:
        """The translation score in natural log (fairseq's own unit before printing)."""
        return self.score * math.log(2)


@dataclass
class NBestList:
    """All hypotheses of one source sentence."""

    id: int
    hypotheses: List[Hypothesis] = field(default_factory=list)
    source: Optional[str] = None
    target: Optional[str] = None


def _error(path: str, lineno: int, what: str) -> FairseqAWDError:
    return FairseqAWDError(f"{path}:{lineno}: {what}")


def _score(path: str, lineno: int, tag: str, value: str) -> float:
    try:
        score = float(value)
    except ValueError:
        raise _error(path, lineno, f"{tag}- line: score '{value}' is not a number") from None
    return check_finite(score, f"{path}:{lineno}: {tag}- line: score",
                        "a translation score of +inf always wins the reranking, and NaN or "
                        "-inf cannot be ranked; generate the n-best list again (a model "
                        "whose scores are not finite diverged: use another checkpoint)")


def parse_nbest(path: str) -> List[NBestList]:
    """Read fairseq-generate output from ``path``; return the n-best lists sorted by id.

    Other lines (logging, the final BLEU line) are skipped. Raises FairseqAWDError naming
    ``file:line`` for a malformed ``S/T/H/D/P`` line, a ``D-``/``P-`` line without its
    ``H-`` line, a score that is not a finite number (NaN, ``inf``, ``-inf``), a ``P-``
    line with fewer scores than its hypothesis has tokens, an empty file, and source ids
    without hypotheses (an ``S-``/``T-`` line with no ``H-`` line, or a gap in the ids
    ``0..max``). A cut file is refused too: one whose last line has
    no newline (cut inside it), or an ``H-`` line without the ``D-`` line that the other
    hypotheses have (cut between lines).
    """
    lists: Dict[int, NBestList] = {}
    first_line: Dict[int, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.endswith("\n"):
                raise _error(path, lineno, "the file ends inside this line (no final newline): "
                             "it was cut, e.g. fairseq-generate was stopped or the disk filled; "
                             "generate it again (or end it with a newline if it is complete)")
            line = raw.rstrip("\n")
            match = _TAGGED.match(line)
            if not match:
                if re.match(r"^[SHDPT]-\d+$", line):
                    raise _error(path, lineno, f"{line[0]}- line has no tab-separated fields")
                continue
            tag, id_text = match.groups()
            if not id_text.isdigit():
                raise _error(path, lineno, f"{tag}- line: id '{id_text}' is not a number")
            sid = int(id_text)
            fields = line.split("\t")[1:]
            nbest = lists.setdefault(sid, NBestList(sid))
            first_line.setdefault(sid, lineno)
            if tag in "ST":
                setattr(nbest, "source" if tag == "S" else "target", "\t".join(fields))
            elif tag in "HD":
                if len(fields) < 2:
                    raise _error(path, lineno, f"{tag}- line: expected "
                                 f"{tag}-ID<tab>SCORE<tab>TEXT, found no score or no text")
                score = _score(path, lineno, tag, fields[0])
                text = "\t".join(fields[1:])
                if tag == "H":
                    nbest.hypotheses.append(
                        Hypothesis(len(nbest.hypotheses), score, text, line=lineno))
                else:
                    last = nbest.hypotheses[-1] if nbest.hypotheses else None
                    if last is None or last.d_text is not None:
                        raise _error(path, lineno, f"D- line for id {sid} without its H- line")
                    last.d_text = text
            else:  # P
                last = nbest.hypotheses[-1] if nbest.hypotheses else None
                if last is None or last.positional_scores is not None:
                    raise _error(path, lineno, f"P- line for id {sid} without its H- line")
                values = fields[0].split() if fields else []
                scores = [_score(path, lineno, "P", v) for v in values]
                # --post-process/--remove-bpe only merge tokens: never fewer scores than words+1
                needed = len(last.h_text.split()) + 1
                if len(scores) < needed:
                    raise _error(path, lineno, f"P- line has {len(scores)} scores but its "
                                 f"H- line (line {last.line}) has {needed - 1} tokens plus </s>")
                last.positional_scores = scores
    if not lists:
        raise FairseqAWDError(f"{path}: no S-/T-/H-/D-/P- lines: not fairseq-generate output "
                              "(run fairseq-generate --nbest N without --quiet)")
    for sid, nbest in lists.items():
        if not nbest.hypotheses:
            raise _error(path, first_line[sid], f"source id {sid} has no hypotheses (no H- line)")
    hypotheses = [hyp for nbest in lists.values() for hyp in nbest.hypotheses]
    if any(hyp.d_text is not None for hyp in hypotheses):
        without_d = [hyp.line for hyp in hypotheses if hyp.d_text is None]
        if without_d:
            raise _error(path, min(without_d), "H- line without the D- line that the other "
                         "hypotheses have: the file was cut or edited; generate it again")
    missing = sorted(set(range(max(lists) + 1)) - set(lists))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise FairseqAWDError(f"{path}: {len(missing)} source ids have no hypotheses: {shown}; "
                              "rescoring needs every sentence of the generated split (fairseq-"
                              "generate skips up to 7 unless --required-batch-size-multiple 1)")
    return [lists[sid] for sid in sorted(lists)]
