"""The noisy channel's score ``log p(x | y)``: a reverse translation model (target -> source
language, e.g. en->de for a de->en system) force-decodes each source sentence ``x`` from a
hypothesis ``y`` (Yee, Ng and Auli 2019, "Simple and Effective Noisy Channel Modeling for
Neural Machine Translation", eq. 2).

Both sides are given as the translation models' own tokens (BPE included): the hypothesis
as fairseq-generate's ``H-`` line without ``--remove-bpe``, the source as its ``S-`` line.
The scores come from fairseq's ``SequenceScorer`` (forced decoding), batched with fairseq's
``LanguagePairDataset``, and cover every token of ``x`` and its closing ``</s>``.
"""

import os
from dataclasses import dataclass
from typing import List, Sequence

import torch
from fairseq import hub_utils
from fairseq.data import LanguagePairDataset
from fairseq.sequence_scorer import SequenceScorer

from fairseq_awd.bf16_scoring import cast_for_bf16_scoring
from fairseq_awd.errors import FairseqAWDError


@dataclass
class ChannelScore:
    """``log p(x | y)`` of one (source, hypothesis) pair."""

    logprob: float  # natural log, summed over the source tokens and </s>
    num_tokens: int  # source tokens scored, </s> included
    num_unk: int  # hypothesis and source tokens mapped to <unk> by the channel's dictionaries


class ChannelScorer:
    """Forced-decoding scores of a fairseq translation model trained in the reverse direction.

    ``checkpoint`` is the reverse model (its source language is the n-best lists' target
    language) and ``data`` the binarized directory with its ``dict.SRC.txt`` and
    ``dict.TGT.txt``. With ``bf16`` the model runs in bfloat16, its log-probabilities and
    their sums in float32 (``fairseq_awd.bf16_scoring``).
    """

    def __init__(self, checkpoint: str, data: str, cpu: bool = False, batch_size: int = 64,
                 bf16: bool = False):
        if not os.path.isfile(checkpoint):
            raise FairseqAWDError(f"--channel: no checkpoint at {checkpoint}")
        if not os.path.isdir(data):
            raise FairseqAWDError(f"--channel-data: no directory {data}: give the binarized "
                                  "data directory the channel model was trained on")
        if batch_size < 1:
            raise FairseqAWDError(f"--batch-size must be positive, got {batch_size}")
        loaded = hub_utils.from_pretrained(
            os.path.dirname(os.path.abspath(checkpoint)),
            checkpoint_file=os.path.basename(checkpoint), data_name_or_path=os.path.abspath(data))
        self.task = loaded["task"]
        if not hasattr(self.task, "src_dict"):
            raise FairseqAWDError(f"--channel {checkpoint} is not a translation model (its task "
                                  f"is {type(self.task).__name__}); give a reverse "
                                  "translation model's checkpoint")
        self.model = loaded["models"][0].eval()
        if bf16:
            cast_for_bf16_scoring(self.model, f"--channel {checkpoint}")
        if not cpu and torch.cuda.is_available():
            self.model.cuda()
        self.batch_size = batch_size
        self.scorer = SequenceScorer(self.task.tgt_dict)
        self.directions = (self.task.cfg.source_lang, self.task.cfg.target_lang)

    def _encode(self, dictionary, text: str) -> torch.Tensor:
        return dictionary.encode_line(text, add_if_not_exist=False, append_eos=True).long()

    @torch.no_grad()
    def score(self, sources: Sequence[str], hypotheses: Sequence[str]) -> List[ChannelScore]:
        """``log p(sources[i] | hypotheses[i])`` for every ``i``, in the order given."""
        if len(sources) != len(hypotheses):
            raise ValueError(f"{len(sources)} sources but {len(hypotheses)} hypotheses")
        src_dict, tgt_dict = self.task.src_dict, self.task.tgt_dict
        inputs = [self._encode(src_dict, h) for h in hypotheses]
        targets = [self._encode(tgt_dict, s) for s in sources]
        dataset = LanguagePairDataset(
            inputs, [t.numel() for t in inputs], src_dict, targets, [t.numel() for t in targets],
            tgt_dict, left_pad_source=self.task.cfg.left_pad_source,
            left_pad_target=self.task.cfg.left_pad_target, shuffle=False)
        device = next(self.model.parameters()).device
        order = sorted(range(len(inputs)), key=lambda i: -inputs[i].numel())
        results: List[ChannelScore] = [None] * len(inputs)  # type: ignore[list-item]
        for start in range(0, len(order), self.batch_size):
            batch = dataset.collater([dataset[i] for i in order[start:start + self.batch_size]])
            sample = {"net_input": {k: v.to(device) for k, v in batch["net_input"].items()},
                      "target": batch["target"].to(device)}
            for i, hypos in zip(batch["id"].tolist(), self.scorer.generate([self.model], sample)):
                scores = hypos[0]["positional_scores"]
                unk = int(inputs[i].eq(src_dict.unk()).sum() + targets[i].eq(tgt_dict.unk()).sum())
                results[i] = ChannelScore(float(scores.double().sum()), scores.numel(), unk)
        return results
