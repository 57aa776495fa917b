from . import awd_language_modeling, translation_lm_fusion  # noqa: F401  (register the tasks)
