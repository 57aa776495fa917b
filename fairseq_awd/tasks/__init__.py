from . import (  # noqa: F401  (register the tasks)
    awd_language_modeling,
    awd_sentence_prediction,
    translation_lm_fusion,
)
