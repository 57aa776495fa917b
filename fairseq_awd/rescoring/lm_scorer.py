"""Batched sentence log-probabilities from a fairseq language model (no state carried).

Each sentence is scored as fairseq's hub ``score`` does, from a leading ``</s>`` (BOS) and
a zero initial state, plus the log-probability of the closing ``</s>`` (which the hub's
``score`` leaves out; ``include_eos=False`` gives exactly its sum). Sentences are sorted by
length, padded on the right and run ``batch_size`` at a time; a unidirectional LM's
outputs at real positions do not depend on the padding after them, and the padded
positions are masked out of the sums.
"""

import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch
from fairseq.hub_utils import GeneratorHubInterface

from fairseq_awd.errors import FairseqAWDError


@dataclass
class LMScore:
    """The LM's view of one sentence: natural-log probability and token counts."""

    logprob: float  # sum over the tokens (and </s> if included), natural log
    num_tokens: int  # tokens scored, </s> included if it was
    num_unk: int  # tokens the dictionary maps to <unk>


def load_lm(checkpoint: str, data: str, cpu: bool = False,
            bf16: bool = False) -> GeneratorHubInterface:
    """Load ``checkpoint`` with the dictionary of ``data`` as a hub interface in eval mode,
    in bfloat16 with ``bf16`` (``fairseq_awd.bf16_scoring``: the sums stay float32).

    A checkpoint trained with another dictionary is refused (FairseqAWDError) by the AWD
    models' dictionary fingerprint check, a backward LM by ``check_forward_lm``.
    """
    from fairseq_awd.hub import from_pretrained

    if not os.path.isfile(checkpoint):
        raise FairseqAWDError(f"--lm: no checkpoint at {checkpoint}")
    if not os.path.isfile(os.path.join(data, "dict.txt")):
        raise FairseqAWDError(f"--lm-data: no dict.txt in {data}: give the binarized data "
                              "directory the LM was trained on")
    hub = from_pretrained(os.path.dirname(os.path.abspath(checkpoint)), data,
                          checkpoint_file=os.path.basename(checkpoint),
                          dtype=torch.bfloat16 if bf16 else None)
    check_forward_lm(hub.task.cfg, f"--lm {checkpoint}")
    hub.eval()
    if not cpu and torch.cuda.is_available():
        hub.cuda()
    return hub


def check_forward_lm(task_cfg: Any, what: str) -> None:
    """Refuse a backward LM (its task's ``reverse_tokens``, set by ``--reverse-tokens``)
    with FairseqAWDError naming ``what`` (option and checkpoint).

    The rescorer and shallow fusion (``--task translation_lm_fusion``) both read a sentence
    from its first word on; a right-to-left LM's probabilities of that order are not the
    sentence's probability, and would be used without any error.
    """
    if getattr(task_cfg, "reverse_tokens", False):  # absent from older checkpoints
        raise FairseqAWDError(f"{what} is a backward LM (trained with --reverse-tokens): "
                              "rescoring and shallow fusion read sentences left to right and "
                              "need a forward LM; give one trained without --reverse-tokens")


class LMScorer:
    """Scores space-separated sentences with the model(s) of a fairseq hub interface."""

    def __init__(self, hub: GeneratorHubInterface, batch_size: int = 64):
        if batch_size < 1:
            raise FairseqAWDError(f"--batch-size must be positive, got {batch_size}")
        self.hub = hub
        self.model = hub.models[0]
        self.dictionary = hub.task.target_dictionary
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, text: str) -> torch.Tensor:
        """Dictionary ids of ``text``'s space-separated symbols, without ``</s>``."""
        return self.dictionary.encode_line(text, add_if_not_exist=False,
                                           append_eos=False).long()

    @torch.no_grad()
    def score(self, sentences: Sequence[str], include_eos: bool = True) -> List[LMScore]:
        """One LMScore per sentence, in the order given."""
        tokens = [self.encode(s) for s in sentences]
        results: List[Optional[LMScore]] = [None] * len(tokens)
        order = sorted(range(len(tokens)), key=lambda i: -tokens[i].numel())
        eos, pad, unk = self.dictionary.eos(), self.dictionary.pad(), self.dictionary.unk()
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            width = tokens[batch[0]].numel() + 1
            src = torch.full((len(batch), width), pad, dtype=torch.long)
            tgt = torch.full((len(batch), width), pad, dtype=torch.long)
            for row, i in enumerate(batch):
                n = tokens[i].numel()
                src[row, 0] = eos
                src[row, 1:n + 1] = tokens[i]
                tgt[row, :n] = tokens[i]
                if include_eos:
                    tgt[row, n] = eos
            lengths = torch.tensor([tokens[i].numel() + 1 for i in batch])
            src, tgt = src.to(self.device), tgt.to(self.device)
            net_output = self.model(src, src_lengths=lengths.to(self.device))
            gathered = self.target_logprobs(net_output, tgt).sum(1).double().cpu()
            counts = tgt.ne(pad).sum(1).cpu()
            for row, i in enumerate(batch):
                results[i] = LMScore(float(gathered[row]), int(counts[row]),
                                     int(tokens[i].eq(unk).sum()))
        return results  # type: ignore[return-value]

    def target_logprobs(self, net_output: Any, target: torch.Tensor) -> torch.Tensor:
        """``log p(target)`` per position ``(B, T)`` in fp32, 0 at padding: an AWD model's
        output head computes only the targets' (``output_nll``, no ``(B, T, V)`` copy of the
        distribution), any other fairseq LM gathers them from its log-probabilities."""
        pad = self.dictionary.pad()
        output_nll = getattr(getattr(self.model, "decoder", None), "output_nll", None)
        if output_nll is not None:
            return -output_nll(net_output, target, ignore_index=pad).float()
        lprobs = self.model.get_normalized_probs(net_output, log_probs=True)
        gathered = lprobs.float().gather(2, target.unsqueeze(-1)).squeeze(-1)
        return gathered.masked_fill(target.eq(pad), 0.0)
