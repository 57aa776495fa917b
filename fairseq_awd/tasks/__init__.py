from . import awd_language_modeling  # noqa: F401  (registers awd_language_modeling)
