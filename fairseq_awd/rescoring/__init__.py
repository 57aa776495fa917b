"""N-best reranking of translations with a fairseq_awd language model.

``nbest``: parse ``fairseq-generate --nbest N`` output; ``text``: undo BPE, detokenize and
prepare text for the LM; ``lm_scorer``: batched LM log-probabilities; ``channel_scorer``:
the noisy channel's ``log p(x | y)`` from a reverse translation model; ``rerank``: the
combined score, the length features, grid-search tuning, BLEU and the paired bootstrap;
``cli``: the ``fairseq-awd-rescore`` command.
"""

from fairseq_awd.rescoring.nbest import Hypothesis, NBestList, parse_nbest
from fairseq_awd.rescoring.rerank import corpus_bleu, rerank, tune_weights

__all__ = ["Hypothesis", "NBestList", "corpus_bleu", "parse_nbest", "rerank", "tune_weights"]
