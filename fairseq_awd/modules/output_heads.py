"""The output layers of the AWD language models behind one interface, ``OutputHead``: what
turns the last recurrent layer's output into a distribution over the ``V`` words.

Every head reads the same ``(V, D)`` word vectors ``w`` and ``(V,)`` biases ``b``, which it
does not own: the caller passes them in on every call (the tied input embedding, or an
untied matrix), so that with tying they *are* the embedding matrix, one tensor. Three heads:

* ``SoftmaxHead``: ``p(x | h) = softmax(h · w_x + b_x)``, the full softmax.
* ``AdaptiveSoftmaxHead``: the tied adaptive softmax (``TiedAdaptiveSoftmax``).
* ``MixtureOfSoftmaxesHead``: the mixture of softmaxes (``MixtureOfSoftmaxes``).

A head's ``output`` is what the model's forward returns first, the *packed output*:
logits for the full softmax; for the others, whatever their NLL and exact log-probabilities
are computed from, with a last column of ones. fairseq's generator applies
``--temperature`` by dividing that first output in place; the column then carries
``1 / temperature`` to ``log_probs``, which returns the exact
``log_softmax(log p / temperature)`` over the vocabulary, as the full softmax does with
logits divided by the temperature.
"""

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .adaptive_softmax import TiedAdaptiveSoftmax
from .mixture_of_softmaxes import MixtureOfSoftmaxes
from .softmax_nll import softmax_nll


class OutputHead(nn.Module):
    """The interface of an output layer over caller-supplied word vectors (see the module).

    Shapes: ``features`` are the last recurrent layer's outputs, time-major ``(T, B, C)``;
    ``weight`` the word vectors ``(V, D)``, ``D = word_dim``; ``bias`` ``(V,)``; the packed
    output is ``(..., P)`` with ``P`` the head's own size, ``target`` ``(...)`` word ids.

    Initialization comes in two steps, so that building a model draws its random numbers
    in the order it always did: the constructor may draw (before the caller initializes
    the embedding), ``reset_parameters`` draws the rest (after it).
    """

    #: ``D``: the size of the word vectors the head reads.
    word_dim: int

    def reset_parameters(self) -> None:
        """Draw the initial weights that come after the embedding's initialization."""

    def output(self, features: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor) -> torch.Tensor:
        """Features ``(T, B, C)`` -> the packed output ``(T, B, P)``."""
        raise NotImplementedError

    def nll(self, output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
            bias: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """``-log p(target)`` of each position, ``(...)`` with the shape of ``target`` (0
        where ``target == ignore_index``), from the packed output ``(..., P)``, without the
        full-vocabulary distribution where the head allows it."""
        raise NotImplementedError

    def log_probs(self, output: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor) -> torch.Tensor:
        """Exact log-probabilities of every word, ``(..., V)`` (float32 for half-precision
        input), from the packed output ``(..., P)``, divided by the temperature or not."""
        raise NotImplementedError


class SoftmaxHead(OutputHead):
    """The full softmax ``log p(x | h) = log_softmax(h · w_x + b_x)``: the packed output is
    the logits ``(T, B, V)``. No parameters of its own; ``D = C``.

    Args:
        input_dim: ``C``, the size of the features and of the word vectors.
    """

    def __init__(self, input_dim: int):
        super().__init__()
        self.word_dim = input_dim

    def extra_repr(self) -> str:
        return f"input_dim={self.word_dim}"

    def output(self, features, weight, bias):
        return F.linear(features, weight, bias)

    def nll(self, output, target, weight, bias, ignore_index=-100):
        # block by block in fp32 (fp64 for fp64): no fp32 (N, V) copy or log_softmax
        return softmax_nll(output.reshape(-1, output.size(-1)), target.reshape(-1),
                           ignore_index=ignore_index).view(target.shape)

    def log_probs(self, output, weight, bias):
        # fp16/bf16 in fp32 (the dtype argument: no fp32 copy of the logits), others as they are
        half = output.dtype in (torch.float16, torch.bfloat16)
        return F.log_softmax(output, dim=-1, dtype=torch.float32 if half else None)


class PackedOutputHead(OutputHead):
    """A head whose packed output is ``[pack(h) ; 1]``: what its NLL and log-probabilities
    are computed from, with the column that carries ``1 / temperature`` (see the module).

    ``log_probs`` divides the packed part back by the column, takes the exact
    log-probabilities ``log p`` and, under a temperature ``t != 1``, returns
    ``log_softmax(log p / t)``.
    """

    def pack(self, features: torch.Tensor) -> torch.Tensor:
        """Features ``(T, B, C)`` -> the packed part ``(T, B, P - 1)``."""
        raise NotImplementedError

    def packed_nll(self, packed: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor, ignore_index: int) -> torch.Tensor:
        """``nll`` from the packed part ``(..., P - 1)``."""
        raise NotImplementedError

    def packed_log_probs(self, packed: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor) -> torch.Tensor:
        """Exact log-probabilities ``(..., V)`` from the packed part ``(..., P - 1)``."""
        raise NotImplementedError

    def output(self, features, weight, bias):
        packed = self.pack(features)
        return torch.cat([packed, packed.new_ones(*packed.shape[:-1], 1)], dim=-1)

    def nll(self, output, target, weight, bias, ignore_index=-100):
        return self.packed_nll(output[..., :-1], target, weight, bias, ignore_index)

    def log_probs(self, output, weight, bias):
        inv_temperature = output[..., -1:]
        lprobs = self.packed_log_probs(output[..., :-1] / inv_temperature, weight, bias)
        if not bool(inv_temperature.eq(1).all()):
            lprobs = torch.log_softmax(lprobs * inv_temperature.to(lprobs.dtype), dim=-1)
        return lprobs


class AdaptiveSoftmaxHead(PackedOutputHead):
    """The tied adaptive softmax (``TiedAdaptiveSoftmax``, ``softmax``): the packed output
    is ``[h ; 1]`` ``(T, B, C + 1)``, ``D = C``; the NLL computes the head and, per tail
    cluster, only the positions whose target is in it.

    Args:
        vocab_size, input_dim, cutoffs, dropout: ``TiedAdaptiveSoftmax``'s (``input_dim``:
            ``C``); its cluster vectors are drawn here, in the constructor.
    """

    def __init__(self, vocab_size: int, input_dim: int, cutoffs: Sequence[int],
                 dropout: float = 0.0):
        super().__init__()
        self.word_dim = input_dim
        self.softmax = TiedAdaptiveSoftmax(vocab_size, input_dim, cutoffs, dropout)

    def pack(self, features):
        return features

    def packed_nll(self, packed, target, weight, bias, ignore_index):
        return self.softmax(packed, target, weight, bias, ignore_index=ignore_index)

    def packed_log_probs(self, packed, weight, bias):
        return self.softmax.log_prob(packed, weight, bias)


class MixtureOfSoftmaxesHead(PackedOutputHead):
    """The mixture of softmaxes (``MixtureOfSoftmaxes``, ``mixture``): the packed output is
    its contexts, prior logits and the column, ``(T, B, K * D + K + 1)``, with ``D`` the
    contexts' size (any ``C``); the NLL needs no ``(..., V)`` distribution.

    Args:
        input_dim, embed_dim, components, dropout: ``MixtureOfSoftmaxes``'s (``C``, ``D``,
            ``K`` and the contexts' locked dropout). Its weights are drawn in
            ``reset_parameters``, after the embedding's.
    """

    def __init__(self, input_dim: int, embed_dim: int, components: int, dropout: float = 0.0):
        super().__init__()
        self.word_dim = embed_dim
        with torch.random.fork_rng(devices=[]):  # drawn again in reset_parameters
            self.mixture = MixtureOfSoftmaxes(input_dim, embed_dim, components, dropout)

    def reset_parameters(self) -> None:
        self.mixture.reset_parameters()

    def pack(self, features):
        return self.mixture.contexts(features)

    def packed_nll(self, packed, target, weight, bias, ignore_index):
        return self.mixture(packed, target, weight, bias, ignore_index=ignore_index)

    def packed_log_probs(self, packed, weight, bias):
        return self.mixture.log_prob(packed, weight, bias)
