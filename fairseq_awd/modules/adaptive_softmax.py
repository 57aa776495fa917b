"""Adaptive softmax (Grave et al. 2016, arXiv 1609.04309) whose output word vectors are the
rows of one ``(V, D)`` matrix, normally the tied input embedding, as in the split softmax
of AWD-QRNN (Merity, Keskar and Socher 2018, arXiv 1803.08240, section 4.1).

The vocabulary is cut at ``0 < c_1 < ... < c_K < V`` into a head ``[0, c_1)`` and ``K``
tail clusters ``[c_k, c_{k+1})`` (``c_{K+1} = V``). With ``h`` the hidden vector, ``w_i``
and ``b_i`` word ``i``'s row of the output matrix and its bias, and ``u_k``, ``a_k`` the
vector and bias of tail cluster ``k``:

    head:   z = [h·w_0 + b_0, ..., h·w_{c_1-1} + b_{c_1-1}, h·u_1 + a_1, ..., h·u_K + a_K]
    p(i)  = softmax(z)_i                                        for i <  c_1
    p(i)  = softmax(z)_{c_1+k-1} · softmax_{j in cluster k}(h·w_j + b_j)_i
                                                                for i in cluster k

so ``sum_i p(i) = 1`` exactly. The word vectors and biases are passed in by the caller
(not owned here): with tying they *are* the embedding matrix, one tensor. The module owns
only the ``K`` cluster vectors and biases.
"""

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

# Not fairseq.modules.AdaptiveSoftmax: it ties tails only to AdaptiveInput's per-band
# matrices, always adds a tail projection, has no output bias, and its get_log_prob given a
# target leaves the other clusters' log-probabilities at 0; here every cluster's word
# vectors are row slices of one (V, D) embedding and log-probabilities are always exact.


def check_cutoffs(cutoffs: Sequence[int], vocab_size: int) -> List[int]:
    """Return ``cutoffs`` as a list of ints, or raise ``ValueError`` unless they are
    positive, strictly increasing and below ``vocab_size`` (every cluster non-empty)."""
    cutoffs = [int(c) for c in cutoffs]
    shown = ",".join(map(str, cutoffs))
    if not cutoffs:
        raise ValueError("adaptive softmax needs at least one cutoff")
    if cutoffs[0] <= 0:
        raise ValueError(f"cutoffs must be positive, got {shown}")
    if any(b <= a for a, b in zip(cutoffs, cutoffs[1:])):
        raise ValueError(
            f"cutoffs must be strictly increasing (the head's size, then each tail cluster's "
            f"first word id), got {shown}"
        )
    if cutoffs[-1] >= vocab_size:
        raise ValueError(
            f"cutoffs {shown} are not below the vocabulary size {vocab_size}, so a cluster "
            "would be empty"
        )
    return cutoffs


def upcast_half(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits to float32 for the softmax; other dtypes as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


ROW_BUCKET = 128


def bucketed(rows: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``rows`` padded (with its last index) to a multiple of ``ROW_BUCKET`` entries when
    ``h`` is a half-precision CPU tensor; ``rows`` itself otherwise.

    A tail cluster's positions differ in number every step. oneDNN, which runs the CPU's
    bf16/fp16 products, builds and caches kernels for every new matrix shape, so that
    unbounded number of shapes made a bf16 training's memory grow by GBs per epoch;
    bucketed row counts bound the shapes. The padded rows' outputs are dropped."""
    extra = -rows.numel() % ROW_BUCKET
    if not extra or h.device.type != "cpu" or h.dtype not in (torch.float16, torch.bfloat16):
        return rows
    return torch.cat([rows, rows[-1:].expand(extra)])


class TiedAdaptiveSoftmax(nn.Module):
    """Exact adaptive softmax over word vectors supplied by the caller.

    Args:
        vocab_size: ``V``, the number of words (rows of the word matrix).
        input_dim: ``D``, the size of the hidden vectors and word vectors.
        cutoffs: ``[c_1, ..., c_K]``: the head holds words ``[0, c_1)``, tail cluster
            ``k`` words ``[c_k, c_{k+1})``, the last one up to ``V``. Word ids should be
            frequency ranks (fairseq-preprocess sorts its dictionary that way).
        dropout: dropout on the hidden vectors fed to the tail clusters (training only).

    Parameters: ``cluster_weight (K, D)`` and ``cluster_bias (K,)``, nothing else. Every
    method takes ``weight (V, D)`` and ``bias (V,)``: the word vectors and biases.
    """

    def __init__(self, vocab_size: int, input_dim: int, cutoffs: Sequence[int],
                 dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.cutoffs = check_cutoffs(cutoffs, vocab_size)
        self.vocab_size = vocab_size
        self.input_dim = input_dim
        self.dropout = dropout
        self.bounds = [*self.cutoffs, vocab_size]  # cluster k is [bounds[k], bounds[k + 1])
        self.register_buffer(
            "tail_starts", torch.tensor(self.cutoffs, dtype=torch.long), persistent=False
        )
        n_clusters = len(self.cutoffs)
        self.cluster_weight = nn.Parameter(torch.empty(n_clusters, input_dim))
        self.cluster_bias = nn.Parameter(torch.zeros(n_clusters))
        nn.init.uniform_(self.cluster_weight, -0.1, 0.1)

    def extra_repr(self) -> str:
        return (f"vocab_size={self.vocab_size}, input_dim={self.input_dim}, "
                f"cutoffs={self.cutoffs}, dropout={self.dropout}")

    def _split(self, weight: torch.Tensor, bias: torch.Tensor
               ) -> Tuple[Tuple[torch.Tensor, ...], Tuple[torch.Tensor, ...]]:
        # One split per call: autograd then builds the (V, D) gradient of ``weight`` once
        # (SplitWithSizesBackward), not once per cluster as separate slices would.
        if weight.shape != (self.vocab_size, self.input_dim) or bias.shape != (self.vocab_size,):
            raise ValueError(
                f"expected weight ({self.vocab_size}, {self.input_dim}) and bias "
                f"({self.vocab_size},), got {tuple(weight.shape)} and {tuple(bias.shape)}"
            )
        sizes = [b - a for a, b in zip([0, *self.cutoffs], self.bounds)]
        return torch.split(weight, sizes), torch.split(bias, sizes)

    def _head_logits(self, h: torch.Tensor, weights, biases) -> torch.Tensor:
        head_weight = torch.cat([weights[0], self.cluster_weight.to(weights[0].dtype)])
        head_bias = torch.cat([biases[0], self.cluster_bias.to(biases[0].dtype)])
        return upcast_half(F.linear(h, head_weight, head_bias))

    def _tail_input(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(h, self.dropout, self.training) if self.dropout > 0 else h

    def cluster_of(self, target: torch.Tensor) -> torch.Tensor:
        """Cluster of each word id: 0 for the head, ``k`` for tail cluster ``k``."""
        return torch.bucketize(target, self.tail_starts, right=True)

    def forward(self, features: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Negative log-likelihood ``-log p(target | h)`` of each position.

        Args:
            features: hidden vectors ``h``, ``(..., D)``.
            target: word ids, ``(...)``; positions equal to ``ignore_index`` get 0.
            weight, bias: word vectors ``(V, D)`` and biases ``(V,)``.

        Returns:
            ``(...)`` with the shape of ``target`` (float32 for half-precision input).
            Only the head and, for each tail cluster, the positions whose target is in it
            are computed.
        """
        shape = target.shape
        h = features.reshape(-1, features.size(-1))
        target = target.reshape(-1)
        weights, biases = self._split(weight, bias)
        keep = target.ne(ignore_index)
        cluster = self.cluster_of(target)
        head_target = torch.where(cluster.eq(0), target, self.cutoffs[0] - 1 + cluster)
        head_target = head_target.masked_fill(~keep, 0)
        nll = F.cross_entropy(self._head_logits(h, weights, biases), head_target,
                              reduction="none")
        nll = nll.masked_fill(~keep, 0.0)
        tail_h = self._tail_input(h)
        for k in range(1, len(self.bounds)):
            rows = (cluster.eq(k) & keep).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            logits = upcast_half(F.linear(tail_h.index_select(0, bucketed(rows, h)), weights[k],
                                          biases[k]))[:rows.numel()]
            word = target.index_select(0, rows) - self.bounds[k - 1]
            nll = nll.index_add(0, rows, F.cross_entropy(logits, word, reduction="none"))
        return nll.view(shape)

    def log_prob(self, features: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor) -> torch.Tensor:
        """Exact log-probabilities of every word: ``(..., D)`` -> ``(..., V)`` (float32 for
        half-precision input).

        ``logsumexp`` over the last dimension is 0 up to rounding: the head's log-softmax
        for the head words, plus, for a tail word, the cluster's head entry and the
        log-softmax within its cluster.
        """
        lead = features.shape[:-1]
        h = features.reshape(-1, features.size(-1))
        weights, biases = self._split(weight, bias)
        head = F.log_softmax(self._head_logits(h, weights, biases), dim=-1)
        c1 = self.cutoffs[0]
        pieces = [head[:, :c1]]
        tail_h = self._tail_input(h)
        for k in range(1, len(self.bounds)):
            logits = upcast_half(F.linear(tail_h, weights[k], biases[k]))
            pieces.append(F.log_softmax(logits, dim=-1) + head[:, c1 + k - 1:c1 + k])
        return torch.cat(pieces, dim=-1).view(*lead, self.vocab_size)
