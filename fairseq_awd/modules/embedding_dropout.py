"""Embedding dropout (Merity et al. 2017, section 4.3; Gal & Ghahramani 2016)."""

import torch
import torch.nn.functional as F
from torch import nn


def embedding_dropout(
    embed: nn.Embedding, tokens: torch.Tensor, p: float, training: bool
) -> torch.Tensor:
    """Look up ``tokens`` in ``embed`` after dropping whole words of the vocabulary.

    A Bernoulli mask of shape ``(V, 1)`` zeroes entire rows of the ``(V, E)`` weight,
    so every occurrence of a dropped word in the batch vanishes; kept rows are scaled
    by ``1 / (1 - p)``. The gradient reaches only the kept rows of ``embed.weight``.

    Args:
        embed: the embedding module (its ``padding_idx`` is respected).
        tokens: integer tensor of any shape ``S``.
        p: probability of dropping a word type, in ``[0, 1)``; not checked on every call:
            the module that holds the rate (``AWDEncoder``) checks it in its constructor.
        training: apply the mask only when True.

    Returns:
        Tensor of shape ``S + (E,)``.
    """
    weight = embed.weight
    if training and p > 0:
        mask = weight.new_empty((weight.size(0), 1)).bernoulli_(1 - p) / (1 - p)
        weight = weight * mask
    return F.embedding(
        tokens, weight, embed.padding_idx, embed.max_norm, embed.norm_type,
        embed.scale_grad_by_freq, embed.sparse,
    )
