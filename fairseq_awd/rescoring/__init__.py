"""N-best reranking of translations with a fairseq_awd language model.

``nbest``: parse ``fairseq-generate --nbest N`` output; ``text``: undo BPE, detokenize and
prepare text for the LM; ``lm_scorer``: batched LM log-probabilities; ``rerank``: the
combined score, grid-search tuning and BLEU; ``cli``: the ``fairseq-awd-rescore`` command.
"""

from fairseq_awd.rescoring.nbest import Hypothesis, NBestList, parse_nbest
from fairseq_awd.rescoring.rerank import corpus_bleu, rerank, tune_weights

__all__ = ["Hypothesis", "NBestList", "corpus_bleu", "parse_nbest", "rerank", "tune_weights"]
