"""Load a trained fairseq_awd model as fairseq's hub interface (``score``, ``sample``)."""

import os

from fairseq import hub_utils


def from_pretrained(
    checkpoint_dir: str,
    data: str,
    checkpoint_file: str = "checkpoint_best.pt",
    **overrides,
) -> hub_utils.GeneratorHubInterface:
    """Return ``fairseq.hub_utils.GeneratorHubInterface`` for a checkpoint.

    Args:
        checkpoint_dir: directory holding ``checkpoint_file``.
        data: binarized data directory whose ``dict.txt`` the model was trained with.
        checkpoint_file: file name inside ``checkpoint_dir``.
        overrides: extra fairseq options (e.g. ``bpe="subword_nmt"``, ``tokenizer="moses"``).

    Example::

        lm = from_pretrained("checkpoints/ptb", "data-bin/ptb")
        lm.score("the company said")["positional_scores"]
        lm.sample("the company said", sampling=True, sampling_topk=10)
    """
    user_dir = os.path.dirname(os.path.abspath(__file__))
    loaded = hub_utils.from_pretrained(
        checkpoint_dir,
        checkpoint_file=checkpoint_file,
        data_name_or_path=os.path.abspath(data),
        user_dir=user_dir,
        **overrides,
    )
    return hub_utils.GeneratorHubInterface(loaded["args"], loaded["task"], loaded["models"])
