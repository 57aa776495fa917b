"""Load a trained fairseq_awd model as fairseq's hub interface (``score``, ``sample``)."""

import os

from fairseq import hub_utils

from fairseq_awd.errors import FairseqAWDError


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

    Raises FairseqAWDError for a missing checkpoint directory, checkpoint file or data
    directory, and for a checkpoint that cannot be read.

    Example::

        lm = from_pretrained("checkpoints/ptb", "data-bin/ptb")
        lm.score("the company said")["positional_scores"]
        lm.sample("the company said", sampling=True, sampling_topk=10)
    """
    path = os.path.join(checkpoint_dir, checkpoint_file)
    if not os.path.isdir(checkpoint_dir):
        raise FairseqAWDError(f"no checkpoint directory {checkpoint_dir}: give the --save-dir "
                              "that fairseq-train wrote the checkpoints to")
    if not os.path.isfile(path):
        found = ", ".join(sorted(f for f in os.listdir(checkpoint_dir) if f.endswith(".pt")))
        fix = (f"give checkpoint_file= one of {found}" if found else
               f"{checkpoint_dir} has no .pt file: give the --save-dir that fairseq-train wrote")
        raise FairseqAWDError(f"no checkpoint {path}: {fix}")
    if not os.path.isdir(data):
        raise FairseqAWDError(f"no data directory {data}: give the binarized data directory "
                              "(with dict.txt) that the model was trained on")
    user_dir = os.path.dirname(os.path.abspath(__file__))
    loaded = hub_utils.from_pretrained(
        checkpoint_dir,
        checkpoint_file=checkpoint_file,
        data_name_or_path=os.path.abspath(data),
        user_dir=user_dir,
        **overrides,
    )
    return hub_utils.GeneratorHubInterface(loaded["args"], loaded["task"], loaded["models"])
