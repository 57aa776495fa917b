"""Continuous cache pointer (Grave, Joulin and Usunier 2016, arXiv 1612.04426), as the
AWD-LSTM reference's ``pointer.py`` applies it to a trained LM (Merity et al. 2017, sec. 5).

For the hidden state ``h_t`` of the last layer at stream position ``t``:

    p(w) = (1 - λ) p_vocab(w) + λ Σ_{i in [t - W, t), x_{i+1} = w} softmax_i(θ h_t · h_i)

over the ``W`` previous positions of the same stream (``x_{i+1}`` is the word that followed
``h_i``; for ``i = t - 1`` it is the current input). Positions with fewer than ``W``
predecessors use ``p_vocab`` alone, as the reference does (it also skips the first position
of each of its BPTT chunks, an off-by-one that makes its result depend on ``--bptt``; here
the result does not).
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class CacheAttention:
    """The pointer distribution of one window of ``T`` positions of ``B`` streams, over
    ``K`` keys: the cached positions and the window's own but its last (which no query of
    the window can see).

    ``weights (B, T, K)``: ``softmax_i(θ h_t · h_i)``, zero outside each query's window;
    ``words (B, K)``: the word that followed each key; ``active (T,)``: the positions that
    have a full window.
    """

    weights: torch.Tensor
    words: torch.Tensor
    active: torch.Tensor

    def distribution(self, vocab_size: int) -> torch.Tensor:
        """``p_ptr (B, T, V)``: the weights summed per word (rows of inactive positions
        are zero)."""
        batch, length, keys = self.weights.shape
        index = self.words.unsqueeze(1).expand(batch, length, keys)
        p_ptr = self.weights.new_zeros(batch, length, vocab_size)
        return p_ptr.scatter_add_(2, index, self.weights)


class ContinuousCache:
    """The cache of ``B`` streams: the last ``window`` hidden states and input words.

    Call it on each window of a stream in order, with ``hidden (B, T, C)`` (the last
    layer's output) and ``inputs (B, T)`` (the window's input tokens); :meth:`reset` at the
    start of a new stream. State: ``keys (B, H, C)`` and ``inputs (B, H)`` with ``H <=
    window``, and ``position``, the number of tokens already seen in the stream.
    """

    def __init__(self, window: int, theta: float):
        if window < 1:
            raise ValueError(f"the cache window must be positive, got {window}")
        self.window = window
        self.theta = theta
        self.reset()

    def reset(self) -> None:
        self.keys: Optional[torch.Tensor] = None
        self.inputs: Optional[torch.Tensor] = None
        self.position = 0

    @torch.no_grad()
    def __call__(self, hidden: torch.Tensor, inputs: torch.Tensor) -> CacheAttention:
        hidden = hidden.detach().float()
        if self.keys is not None and self.keys.size(0) != hidden.size(0):
            self.reset()
        keys = hidden if self.keys is None else torch.cat([self.keys, hidden], dim=1)
        tokens = inputs if self.inputs is None else torch.cat([self.inputs, inputs], dim=1)
        cached, length = keys.size(1) - hidden.size(1), hidden.size(1)
        # Query t (key index cached + t) attends to keys [cached + t - W, cached + t).
        query = torch.arange(length, device=hidden.device).unsqueeze(1) + cached
        key = torch.arange(keys.size(1) - 1, device=hidden.device).unsqueeze(0)
        in_window = (key < query) & (key >= query - self.window)
        scores = self.theta * torch.bmm(hidden, keys[:, :-1].transpose(1, 2))
        scores = scores.masked_fill(~in_window, -math.inf)
        active = torch.arange(length, device=hidden.device) + self.position >= self.window
        weights = torch.softmax(scores, dim=-1).masked_fill(~active.view(1, -1, 1), 0.0)
        self.keys, self.inputs = keys[:, -self.window:], tokens[:, -self.window:]
        self.position += length
        return CacheAttention(weights, tokens[:, 1:], active)


def mix_with_cache(vocab_log_probs: torch.Tensor, attention: CacheAttention,
                   lambdah: float) -> torch.Tensor:
    """``log((1 - λ) p_vocab + λ p_ptr)`` ``(B, T, V)`` at the active positions, the
    vocabulary log-probabilities ``(B, T, V)`` unchanged elsewhere.

    Only the ``K`` cached words of a position can have ``p_ptr > 0``; every other word's
    log-probability just shifts by ``log(1 - λ)``, so the full mixture is computed for the
    cached words alone (one pass over ``V`` instead of several).
    """
    lprobs = vocab_log_probs.float()
    log_keep = math.log1p(-lambdah) if lambdah < 1 else -math.inf
    log_lambda = math.log(lambdah) if lambdah > 0 else -math.inf
    batch, length, keys = attention.weights.shape
    index = attention.words.unsqueeze(1).expand(batch, length, keys)
    # p_ptr of each cached word, duplicates summed: scattered over V, then read back.
    p_ptr = attention.distribution(lprobs.size(-1))
    mixed_cached = torch.logaddexp(lprobs.gather(2, index) + log_keep,
                                   p_ptr.gather(2, index).log() + log_lambda)
    mixed = (lprobs + log_keep).scatter_(2, index, mixed_cached)
    inactive = ~attention.active
    if inactive.any():
        mixed[:, inactive] = lprobs[:, inactive]
    return mixed
