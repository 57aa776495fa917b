"""Evaluation beyond ``fairseq-eval-lm``: the continuous cache pointer and dynamic evaluation
(``fairseq-awd-eval``)."""

from fairseq_awd.evaluation.scorers import CachePointerLM, DynamicEvalLM

__all__ = ["CachePointerLM", "DynamicEvalLM"]
