"""Mixture of softmaxes (Yang, Dai, Salakhutdinov and Cohen 2017, arXiv 1711.03953, eq. 4):

    P(x | c) = sum_k pi_k(c) * softmax(h_k(c) · w_x + b_x),
    h_k(c)   = tanh(W_k g(c) + a_k),        pi(c) = softmax(U g(c)),

with ``g(c)`` the last recurrent layer's (dropped) output, ``K`` contexts ``h_k`` of the
word vectors' size ``D`` and a prior ``pi`` over them. Probabilities are mixed, never
log-probabilities averaged; everything is computed in log space
(``log P = logsumexp_k(log pi_k + log_softmax(z_k))``), so no ``+ 1e-8`` is needed. The
word vectors and biases are passed in by the caller (the tied embedding).
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .adaptive_softmax import upcast_half
from .locked_dropout import LockedDropout


class MixtureOfSoftmaxes(nn.Module):
    """The MoS output layer over word vectors supplied by the caller.

    Args:
        input_dim: ``C``, the size of ``g`` (the last recurrent layer's output).
        embed_dim: ``D``, the size of the contexts and of the word vectors.
        components: ``K``, the number of softmaxes (15 in the paper).
        dropout: locked dropout on the contexts (the paper's ``dropoutl``).

    Parameters: ``latent.weight (K * D, C)``, ``latent.bias (K * D,)`` and ``prior.weight
    (K, C)`` (no bias), as in the reference code.
    """

    def __init__(self, input_dim: int, embed_dim: int, components: int, dropout: float = 0.0):
        super().__init__()
        if components < 1:
            raise ValueError(f"a mixture of softmaxes needs at least 1 component, got {components}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.components, self.embed_dim, self.dropout = components, embed_dim, dropout
        self.latent = nn.Linear(input_dim, components * embed_dim)
        self.prior = nn.Linear(input_dim, components, bias=False)
        self.locked_dropout = LockedDropout()

    def reset_parameters(self) -> None:
        """Draw the weights again, as the constructor drew them (``nn.Linear``'s init)."""
        self.latent.reset_parameters()
        self.prior.reset_parameters()

    def extra_repr(self) -> str:
        return f"components={self.components}, embed_dim={self.embed_dim}, dropout={self.dropout}"

    def contexts(self, hidden: torch.Tensor) -> torch.Tensor:
        """Time-major ``g`` ``(T, B, C)`` -> ``[h_1 ... h_K, U g]`` ``(T, B, K * D + K)``: the
        contexts (after their locked dropout) and the prior's logits, packed."""
        latent = self.locked_dropout(torch.tanh(self.latent(hidden)), self.dropout)
        return torch.cat([latent, self.prior(hidden)], dim=-1)

    def _unpack(self, packed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        k, d = self.components, self.embed_dim
        latent = packed[..., : k * d].reshape(*packed.shape[:-1], k, d)
        return latent, F.log_softmax(upcast_half(packed[..., k * d:]), dim=-1)

    def _component_logits(self, latent: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor) -> torch.Tensor:
        return upcast_half(F.linear(latent, weight, bias))  # (..., K, V)

    def log_prob(self, packed: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor) -> torch.Tensor:
        """Exact ``log P(x | c)`` for every word: packed contexts ``(..., K * D + K)``,
        word vectors ``(V, D)`` and biases ``(V,)`` -> ``(..., V)`` (float32 for half input)."""
        latent, log_prior = self._unpack(packed)
        log_softmaxes = F.log_softmax(self._component_logits(latent, weight, bias), dim=-1)
        return torch.logsumexp(log_softmaxes + log_prior.unsqueeze(-1), dim=-2)

    def forward(self, packed: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Negative log-likelihood ``-log P(target | c)`` of each position, ``(...)`` with
        the shape of ``target`` (0 where ``target == ignore_index``).

        Needs each component's normalizer and its target logit only: the mixed ``(..., V)``
        distribution and the component softmaxes are never formed."""
        latent, log_prior = self._unpack(packed)
        logits = self._component_logits(latent, weight, bias)  # (..., K, V)
        keep = target.ne(ignore_index)
        index = target.masked_fill(~keep, 0).unsqueeze(-1).unsqueeze(-1)
        index = index.expand(*target.shape, self.components, 1)
        target_logit = logits.gather(-1, index).squeeze(-1)  # (..., K)
        log_p = torch.logsumexp(log_prior + target_logit - torch.logsumexp(logits, -1), -1)
        return (-log_p).masked_fill(~keep, 0.0)
