"""Load a trained fairseq_awd model as fairseq's hub interface (``score``, ``sample``)."""

import os
from typing import List, Optional, Union

import torch
from fairseq import hub_utils

from fairseq_awd.bf16_scoring import cast_for_bf16_scoring, scoring_dtype
from fairseq_awd.errors import FairseqAWDError


class AWDHubInterface(hub_utils.GeneratorHubInterface):
    """fairseq's ``GeneratorHubInterface`` whose ``score`` refuses an empty sentence.

    fairseq's ``score`` gives the log-probability of each token given the ones before it,
    without the closing ``</s>``: an empty or all-whitespace sentence has no token, and its
    ``score`` (the mean of none) was NaN. It is refused instead of scoring ``</s>`` alone,
    which would change what ``score`` means for this one input.
    """

    def score(self, sentences: Union[str, List[str]], replace_newline_with_eos: bool = False,
              **kwargs):
        batch = [sentences] if isinstance(sentences, str) else sentences
        for i, sentence in enumerate(batch):
            if not sentence.strip():
                where = "the sentence" if isinstance(sentences, str) else f"sentence {i}"
                raise FairseqAWDError(
                    f"score: {where} is empty or only whitespace, so it has no token to score "
                    "(score leaves out the closing </s>); give at least one word, or use "
                    "fairseq_awd.rescoring.lm_scorer.LMScorer, which scores </s> too")
        return super().score(sentences, replace_newline_with_eos=replace_newline_with_eos,
                             **kwargs)


def from_pretrained(
    checkpoint_dir: str,
    data: str,
    checkpoint_file: str = "checkpoint_best.pt",
    dtype: Optional[Union[str, torch.dtype]] = None,
    **overrides,
) -> AWDHubInterface:
    """Return fairseq's hub interface (``fairseq.hub_utils.GeneratorHubInterface``) for a
    checkpoint, as ``AWDHubInterface``: the same methods, and ``score`` refuses an empty or
    all-whitespace sentence with FairseqAWDError instead of returning NaN (it scores the
    tokens without the closing ``</s>``, so such a sentence has none).

    Args:
        checkpoint_dir: directory holding ``checkpoint_file``.
        data: binarized data directory whose ``dict.txt`` the model was trained with.
        checkpoint_file: file name inside ``checkpoint_dir``.
        dtype: ``torch.bfloat16`` (or ``"bf16"``) for bf16 scoring and sampling: the model
            runs in bf16, log-probabilities and their sums stay float32
            (``fairseq_awd.bf16_scoring``); None or ``torch.float32`` (the default): float32,
            also for a checkpoint trained with ``--bf16``. fairseq's ``bf16=True`` override
            means the same.
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
    bf16 = scoring_dtype(dtype) == torch.bfloat16
    if "bf16" in overrides and dtype is not None and bool(overrides["bf16"]) != bf16:
        raise FairseqAWDError(f"from_pretrained: dtype={dtype!r} and bf16={overrides['bf16']!r} "
                              "disagree; give one of them")
    bf16 = bf16 or bool(overrides.pop("bf16", False))
    user_dir = os.path.dirname(os.path.abspath(__file__))
    loaded = hub_utils.from_pretrained(
        checkpoint_dir,
        checkpoint_file=checkpoint_file,
        data_name_or_path=os.path.abspath(data),
        user_dir=user_dir,
        # set either way: the checkpoint's own common.bf16 (a model trained with --bf16)
        # would otherwise make the models' prepare_for_inference_ cast them unasked
        bf16=bf16,
        **overrides,
    )
    hub = AWDHubInterface(loaded["args"], loaded["task"], loaded["models"])
    if bf16:  # the AWD models cast themselves in prepare_for_inference_; any other model here
        for model in hub.models:
            cast_for_bf16_scoring(model, path)
    return hub
