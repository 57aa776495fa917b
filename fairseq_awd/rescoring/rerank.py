"""Combined score, reranking, BLEU and the grid search over the two weights.

Each hypothesis gets ``score = tm + lm_weight * lm + length_weight * length`` where ``tm``
is fairseq's hypothesis score in natural log (length-normalized by fairseq), ``lm`` the
LM's log-probability of the hypothesis and ``</s>`` (total, or per token with
``lm_normalize``) and ``length`` the number of words the LM sees (before any LM BPE).
Ties go to the hypothesis fairseq ranked higher, so weights of 0 give its 1-best.
"""

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
from sacrebleu.metrics import BLEU

from fairseq_awd.errors import FairseqAWDError


@dataclass
class Features:
    """Per-hypothesis features of a corpus, as ``(num_sources, max_nbest)`` arrays;
    ``valid`` is False where a source has fewer hypotheses (partial lists)."""

    tm: np.ndarray
    lm: np.ndarray
    length: np.ndarray
    valid: np.ndarray

    @classmethod
    def from_lists(cls, tm: Sequence[Sequence[float]], lm: Sequence[Sequence[float]],
                   length: Sequence[Sequence[float]]) -> "Features":
        width = max(len(row) for row in tm)
        arrays = []
        for rows in (tm, lm, length):
            out = np.zeros((len(tm), width))
            for i, row in enumerate(rows):
                out[i, :len(row)] = row
            arrays.append(out)
        valid = np.zeros((len(tm), width), dtype=bool)
        for i, row in enumerate(tm):
            valid[i, :len(row)] = True
        return cls(*arrays, valid)

    def combined(self, lm_weight: float, length_weight: float) -> np.ndarray:
        score = self.tm + lm_weight * self.lm + length_weight * self.length
        return np.where(self.valid, score, -np.inf)


def rerank(features: Features, lm_weight: float, length_weight: float) -> List[int]:
    """The index of the best hypothesis of each source (first one on ties)."""
    return features.combined(lm_weight, length_weight).argmax(axis=1).tolist()


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu's default corpus BLEU; ``references`` is a list of reference streams."""
    return BLEU().corpus_score(list(hypotheses), [list(r) for r in references]).score


def _sentence_stats(hypotheses: Sequence[Sequence[str]],
                    references: Sequence[Sequence[str]]) -> np.ndarray:
    """sacrebleu's sufficient statistics (sys_len, ref_len, correct[4], total[4]) of every
    hypothesis: ``(num_sources, max_nbest, 10)``; summed over a selection they give its
    corpus BLEU."""
    bleu = BLEU(effective_order=True)
    width = max(len(h) for h in hypotheses)
    stats = np.zeros((len(hypotheses), width, 10))
    for i, hyps in enumerate(hypotheses):
        refs = [stream[i] for stream in references]
        for j, hyp in enumerate(hyps):
            s = bleu.sentence_score(hyp, refs)
            stats[i, j] = [s.sys_len, s.ref_len, *s.counts, *s.totals]
    return stats


def _bleu_from_stats(stats: np.ndarray) -> float:
    total = stats.sum(axis=0)
    return BLEU.compute_bleu(
        correct=[int(x) for x in total[2:6]], total=[int(x) for x in total[6:10]],
        sys_len=int(total[0]), ref_len=int(total[1]), smooth_method="exp",
    ).score


def parse_grid(spec: str, option: str) -> List[float]:
    """``"START:STOP:STEP"`` (inclusive) or comma-separated values -> the values."""
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            return [round(start + k * step, 10) for k in range(count)]
        return [float(x) for x in spec.split(",")]
    except ValueError:
        raise FairseqAWDError(f"{option}: expected START:STOP:STEP with STEP > 0 and "
                              f"STOP >= START, or comma-separated numbers, got '{spec}'") from None


def tune_weights(features: Features, hypotheses: Sequence[Sequence[str]],
                 references: Sequence[Sequence[str]], lm_weights: Sequence[float],
                 length_weights: Sequence[float]) -> Tuple[float, float, float]:
    """Grid search for the ``(lm_weight, length_weight)`` with the best corpus BLEU.

    ``hypotheses[i][j]`` is the output text of hypothesis ``j`` of source ``i``. Ties go
    to the smaller ``|lm_weight|``, then the smaller ``|length_weight|``. Returns
    ``(lm_weight, length_weight, bleu)``.
    """
    stats = _sentence_stats(hypotheses, references)
    rows = np.arange(len(hypotheses))
    grid = sorted(((a, b) for a in lm_weights for b in length_weights),
                  key=lambda ab: (abs(ab[0]), abs(ab[1])))
    best = None
    seen = {}
    for a, b in grid:
        choice = features.combined(a, b).argmax(axis=1)
        key = choice.tobytes()
        if key not in seen:
            seen[key] = _bleu_from_stats(stats[rows, choice])
        if best is None or seen[key] > best[2]:
            best = (a, b, seen[key])
    return best
