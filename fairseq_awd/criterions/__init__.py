from . import awd_cross_entropy  # noqa: F401  (registers awd_cross_entropy)
