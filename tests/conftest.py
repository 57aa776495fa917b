"""Every test runs on one thread: pytest-xdist gives each core its own worker, and the
fairseq commands the tests run in-process get what their ``python -m fairseq_cli.*``
processes had (``OMP_NUM_THREADS=1``).

The files that take longest run first: ``make test`` keeps each file on one worker, and a
long file started last would leave the other worker idle while it ends.
"""

import torch

torch.set_num_threads(1)

LONGEST_FIRST = [
    "test_recipe_scripts.py", "test_recipes.py", "test_ulmfit_recipe.py", "test_end_to_end.py",
    "test_awd_eval.py", "test_gpu_check.py", "test_qrnn_learning.py", "test_shallow_fusion.py",
    "test_classifier.py", "test_rescore_nbest.py", "test_recipe_resume.py",
]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept
