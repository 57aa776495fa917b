"""Combined score, reranking, BLEU and the tuning of the feature weights.

Each hypothesis gets ``score = tm + sum_k w_k * f_k`` where ``tm`` is fairseq's hypothesis
score in natural log (length-normalized by fairseq) and ``f_k`` named features (the LM's
log-probability, a length feature, the noisy channel's ``log p(x | y)``). With per-token
LM and channel features this is Yee et al. (2019)'s eq. 3 with length normalization.
Ties go to the hypothesis fairseq ranked higher, so weights of 0 give its 1-best.
"""

import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
from sacrebleu.metrics import BLEU


@dataclass
class Features:
    """Per-hypothesis features of a corpus, as ``(num_sources, max_nbest)`` arrays: ``tm``,
    and ``named`` by feature name; ``valid`` is False where a source has fewer hypotheses
    (partial lists)."""

    tm: np.ndarray
    valid: np.ndarray
    named: Dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_lists(cls, tm: Sequence[Sequence[float]],
                   **named: Sequence[Sequence[float]]) -> "Features":
        """``tm`` and each named feature as one list of values per source sentence."""
        width = max(len(row) for row in tm)

        def array(rows: Sequence[Sequence[float]]) -> np.ndarray:
            out = np.zeros((len(tm), width))
            for i, row in enumerate(rows):
                out[i, :len(row)] = row
            return out

        valid = np.zeros((len(tm), width), dtype=bool)
        for i, row in enumerate(tm):
            valid[i, :len(row)] = True
        return cls(array(tm), valid, {name: array(rows) for name, rows in named.items()})

    def combined(self, weights: Mapping[str, float]) -> np.ndarray:
        """``tm + sum_k weights[k] * named[k]``; -inf where there is no hypothesis."""
        unknown = set(weights) - set(self.named)
        if unknown:
            raise ValueError(f"no feature {sorted(unknown)}; the features are "
                             f"{sorted(self.named)}")
        score = self.tm.copy()
        for name, weight in weights.items():
            if weight:
                score += weight * self.named[name]
        return np.where(self.valid, score, -np.inf)


def rerank(features: Features, weights: Mapping[str, float]) -> List[int]:
    """The index of the best hypothesis of each source (first one on ties)."""
    return features.combined(weights).argmax(axis=1).tolist()


def source_length_gap(hypothesis_words: int, source_words: int, ratio: float) -> float:
    """A word penalty tied to the source: ``-|len(y) - ratio * len(x)|``. Unlike a bonus per
    word, it pulls each hypothesis toward the length expected from its source, so its
    effect does not depend on whether a test set's beam output is short or long."""
    return -abs(hypothesis_words - ratio * source_words)


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


def _box_mean(values: np.ndarray) -> np.ndarray:
    """Each grid point's mean over itself and its neighbours one step away along every axis
    (diagonals included; fewer at the edges)."""
    out = values.astype(float)
    for axis, size in enumerate(values.shape):
        padding = [(1, 1) if a == axis else (0, 0) for a in range(values.ndim)]
        padded = np.pad(out, padding, constant_values=np.nan)
        out = np.nanmean([np.take(padded, range(k, k + size), axis=axis) for k in range(3)],
                         axis=0)
    return out


def tune_weights(features: Features, hypotheses: Sequence[Sequence[str]],
                 references: Sequence[Sequence[str]], grids: Mapping[str, Sequence[float]],
                 smooth: bool = False) -> Tuple[Dict[str, float], float, float]:
    """Grid search for the feature weights with the best corpus BLEU.

    ``hypotheses[i][j]`` is the output text of hypothesis ``j`` of source ``i``; ``grids``
    maps each feature to the weights tried (the search covers their product). With
    ``smooth``, a point is judged by the mean BLEU of itself and its grid neighbours, so a
    broad plateau wins over a lone spike that one noisy tuning set happens to favour. Ties go
    to the smaller ``|weight|`` of the first feature in ``grids``, then of the next.
    Returns ``(weights, bleu, objective)``: BLEU at the chosen weights, and the (smoothed)
    value it was chosen by.
    """
    names = list(grids)
    axes = [list(grids[n]) for n in names]
    stats = _sentence_stats(hypotheses, references)
    rows = np.arange(len(hypotheses))
    bleu = np.zeros([len(a) for a in axes])
    seen: Dict[bytes, float] = {}
    for index in itertools.product(*[range(len(a)) for a in axes]):
        weights = {n: axes[k][i] for k, (n, i) in enumerate(zip(names, index))}
        choice = features.combined(weights).argmax(axis=1)
        key = choice.tobytes()
        if key not in seen:
            seen[key] = _bleu_from_stats(stats[rows, choice])
        bleu[index] = seen[key]
    objective = _box_mean(bleu) if smooth else bleu
    order = sorted(itertools.product(*[range(len(a)) for a in axes]),
                   key=lambda index: tuple(abs(axes[k][i]) for k, i in enumerate(index)))
    best = max(order, key=lambda index: objective[index])  # first of the best in tie order
    weights = {n: axes[k][i] for k, (n, i) in enumerate(zip(names, best))}
    return weights, float(bleu[best]), float(objective[best])


def length_ratio(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Hypothesis / reference length of a corpus, as sacrebleu's BLEU counts it."""
    score = BLEU().corpus_score(list(hypotheses), [list(r) for r in references])
    return score.sys_len / score.ref_len


def paired_bootstrap(baseline: Sequence[str], systems: Mapping[str, Sequence[str]],
                     references: Sequence[Sequence[str]]) -> Dict[str, float]:
    """sacrebleu's paired bootstrap resampling test (Koehn 2004; 1,000 resamples with its
    fixed seed): the p-value of each system's BLEU difference from ``baseline``. A system
    whose output is the baseline's gets 1.0 (sacrebleu's test gives it its smallest p)."""
    import logging

    from sacrebleu.significance import PairedTest

    differ = {name: list(h) for name, h in systems.items() if list(h) != list(baseline)}
    p_values = {name: 1.0 for name in systems}
    if differ:
        named = [("baseline", list(baseline)), *differ.items()]
        metric = BLEU(references=[list(r) for r in references])
        logger = logging.getLogger("sacrebleu")
        level = logger.level
        logger.setLevel(logging.WARNING)  # it logs every resampling step at INFO
        try:
            _, scores = PairedTest(named, {"BLEU": metric}, references=None, test_type="bs")()
        finally:
            logger.setLevel(level)
        p_values.update((name, result.p_value) for name, result in
                        zip(scores["System"][1:], scores["BLEU"][1:]))
    return p_values
