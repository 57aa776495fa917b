"""Locked (variational) dropout (Gal & Ghahramani 2016; Merity et al. 2017, section 4.2)."""

import torch
from torch import nn


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence, shared by every time step.

    Input and output have shape ``(T, B, C)`` (time-major): the mask has shape
    ``(1, B, C)`` and is broadcast over ``T``. Kept units are scaled by ``1 / (1 - p)``.
    Identity in eval mode or when ``p == 0``.

    ``p`` must be in ``[0, 1)``; it is not checked on every call: the modules that hold a
    rate (``AWDEncoder``, ``MixtureOfSoftmaxes``) check it in their constructors.
    """

    def forward(self, x: torch.Tensor, p: float) -> torch.Tensor:
        if not self.training or p == 0:
            return x
        if x.dim() != 3:
            raise ValueError(f"LockedDropout expects (T, B, C) input, got shape {tuple(x.shape)}")
        mask = x.new_empty((1, x.size(1), x.size(2))).bernoulli_(1 - p) / (1 - p)
        return x * mask
