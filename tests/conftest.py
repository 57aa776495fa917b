"""Every test runs on one thread: pytest-xdist gives each core its own worker, and the
fairseq commands the tests run in-process get what their ``python -m fairseq_cli.*``
processes had (``OMP_NUM_THREADS=1``)."""

import torch

torch.set_num_threads(1)
