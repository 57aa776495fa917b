"""Language models that fairseq's ``eval_lm`` (``SequenceScorer``) scores with the continuous
cache pointer or with dynamic evaluation, so that both report exactly what
``fairseq-eval-lm`` reports, from the same loop.

Each wrapper takes the calls ``SequenceScorer`` makes, in stream order (one BPTT window per
call, ``stream_id``/``stream_start`` from ``awd_language_modeling``):

* ``forward(**net_input)``, then ``get_normalized_probs(net_output, log_probs, sample)``,
  once per window (``--softmax-batch`` would split the second call and is refused by
  ``fairseq-awd-eval``).

``LineEndScores`` only listens: it wraps whichever of them is scored (or the plain model)
and splits the scores into line ends and characters, for bits per character.
"""

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from fairseq import utils
from torch import nn

from fairseq_awd.data import bptt_windows
from fairseq_awd.modules.cache_pointer import ContinuousCache, mix_with_cache
from fairseq_awd.optim.dynamic_eval import DynamicEvaluation


def window_nll(lprobs: torch.Tensor, target: torch.Tensor, pad: int) -> torch.Tensor:
    """Mean negative log-likelihood of a window's targets ``(B, T)`` under ``lprobs (B, T,
    V)``, padding excluded: the loss whose gradient dynamic evaluation follows (Krause et
    al.: the mean cross-entropy of the segment)."""
    return F.nll_loss(lprobs.reshape(-1, lprobs.size(-1)).float(), target.reshape(-1),
                      ignore_index=pad)


class CachePointerLM(nn.Module):
    """``model`` with the continuous cache pointer: ``log((1 - λ) p_vocab + λ p_ptr)``
    (:mod:`fairseq_awd.modules.cache_pointer`), one cache per stream."""

    def __init__(self, model: nn.Module, window: int, theta: float, lambdah: float):
        super().__init__()
        self.model = model
        self.window, self.theta, self.lambdah = window, theta, lambdah
        self._caches: Dict[Optional[str], ContinuousCache] = {}

    def forward(self, src_tokens: torch.Tensor, src_lengths=None, stream_id=None,
                stream_start: bool = True, **kwargs):
        out, extra = self.model(src_tokens, src_lengths=src_lengths, stream_id=stream_id,
                                stream_start=stream_start, **kwargs)
        if stream_start or stream_id not in self._caches:
            self._caches[stream_id] = ContinuousCache(self.window, self.theta)
        hidden = extra["raw_output"].transpose(0, 1)
        attention = self._caches[stream_id](hidden, src_tokens)
        if stream_id is None:
            del self._caches[None]
        return out, dict(extra, cache_attention=attention)

    def get_normalized_probs(self, net_output, log_probs: bool, sample=None) -> torch.Tensor:
        lprobs = self.model.get_normalized_probs(net_output, log_probs=True, sample=sample)
        mixed = mix_with_cache(lprobs, net_output[1]["cache_attention"], self.lambdah)
        return mixed if log_probs else mixed.exp()


class DynamicEvalLM(nn.Module):
    """``model`` under dynamic evaluation (Krause et al. 2017): each window is scored with the
    current weights, then ``optimizer`` takes one step on its mean NLL. The weights change
    in memory only; :meth:`DynamicEvaluation.reset` brings the trained ones back."""

    def __init__(self, model: nn.Module, optimizer: DynamicEvaluation, pad: int):
        super().__init__()
        self.model = model
        self.optimizer = optimizer
        self.pad = pad

    def forward(self, *args, **kwargs):
        with torch.enable_grad():
            return self.model(*args, **kwargs)

    def get_normalized_probs(self, net_output, log_probs: bool, sample=None) -> torch.Tensor:
        with torch.enable_grad():
            lprobs = self.model.get_normalized_probs(net_output, log_probs=True, sample=sample)
            self.optimizer.zero_grad()
            window_nll(lprobs, sample["target"], self.pad).backward()
        self.optimizer.step()
        lprobs = lprobs.detach()
        return lprobs if log_probs else lprobs.exp()


class LineEndScores(nn.Module):
    """``model`` as it is, keeping apart the log-probabilities of the targets that are line
    ends (``</s>``) and of all other targets (padding excluded), for bits per character with
    and without the line ends. Wraps the outermost scorer: it sees the log-probabilities
    that ``eval_lm`` sums, and skips infinite ones as ``eval_lm`` does."""

    def __init__(self, model: nn.Module, dictionary):
        super().__init__()
        self.model = model
        self.eos, self.pad = dictionary.eos(), dictionary.pad()
        self.sums = {"line_end": 0.0, "character": 0.0}
        self.counts = {"line_end": 0, "character": 0}

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def get_normalized_probs(self, net_output, log_probs: bool, sample=None) -> torch.Tensor:
        probs = self.model.get_normalized_probs(net_output, log_probs=log_probs, sample=sample)
        target = sample["target"]
        scores = probs.detach().gather(-1, target.unsqueeze(-1)).squeeze(-1).double()
        if not log_probs:
            scores = scores.log()
        finite = torch.isfinite(scores) & target.ne(self.pad)
        for kind, mask in (("line_end", target.eq(self.eos)), ("character", target.ne(self.eos))):
            mask = mask & finite
            self.sums[kind] += float(scores[mask].sum())
            self.counts[kind] += int(mask.sum())
        return probs

    def bits_per_character(self) -> float:
        """Mean negative log2-probability of the targets that are not line ends."""
        count = self.counts["character"]
        return -self.sums["character"] / count / math.log(2) if count else 0.0


def collect_gradient_statistics(model: nn.Module, task, optimizer: DynamicEvaluation,
                                split: str, num_streams: int, bptt: int,
                                max_batches: int = -1) -> int:
    """Krause et al.'s statistics pass: the mean-NLL gradient of every ``bptt``-token window
    of ``split`` laid out as ``num_streams`` streams (state carried, eval mode), at most
    ``max_batches`` windows if positive. Returns the number of windows used."""
    streams = task.load_streams(split, num_streams)
    device = next(model.parameters()).device
    pad = task.target_dictionary.pad()
    model.eval()
    used = 0
    for start, length in bptt_windows(streams.stream_length, bptt):
        if 0 < max_batches <= used:
            break
        sample = utils.move_to_cuda(task.collate_window([streams[(start, length)]]), device)
        lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
        optimizer.zero_grad()
        window_nll(lprobs, sample["target"], pad).backward()
        optimizer.accumulate_gradient_statistics()
        used += 1
    optimizer.zero_grad()
    optimizer.finish_gradient_statistics()
    return used
