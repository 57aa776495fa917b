"""The AWD encoder (Merity, Keskar and Socher 2017, arXiv 1708.02182, sections 4.2-4.3): a
word embedding with embedding dropout, then a stack of recurrent layers with locked dropout
on the embeddings, between the layers and on the top layer's output.

The AWD language models' decoder holds one under its output head
(``fairseq_awd.modules.output_heads``); the ULMFiT classifiers (Howard and Ruder 2018) put
concat pooling and a classifier head on it.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from .embedding_dropout import embedding_dropout
from .locked_dropout import LockedDropout

# Per layer, the two tensors a layer carries ((h, c) for an LSTM, (cell, last input) for
# a QRNN), each (1, B, size).
LayerStates = List[Tuple[torch.Tensor, torch.Tensor]]


class AWDEncoder(nn.Module):
    """Tokens ``(B, T)`` -> the top layer's outputs ``(T, B, C)``, with the AWD dropouts.

    Each of ``layers`` is called as ``output, state = layer(x, state)``: ``x`` is
    time-major ``(T, B, C_in)``, ``state`` the layer's pair of ``(1, B, size)`` tensors or
    None (zeros), e.g. ``WeightDropLSTM`` or ``QRNNLayer``. Layer 0 reads the embeddings,
    layer ``i`` the output of layer ``i - 1``.

    Args:
        embed_tokens: the ``(V, E)`` word embedding; its weights are initialized
            uniformly in [-0.1, 0.1], as in the reference implementation.
        layers: the recurrent layers, bottom first (at least one).
        dropout: locked dropout on the top layer's output.
        dropouth: locked dropout between layers.
        dropouti: locked dropout on the embeddings.
        dropoute: embedding dropout: the probability of dropping a word of the vocabulary
            (every occurrence of it in the batch).
        fingerprint: an integer that names the token-to-id map the embedding rows belong
            to, kept in the state dict as ``dictionary_fingerprint`` so that the owner can
            refuse weights of another vocabulary (this module never reads it).

    The four rates are checked here, once: a ``ValueError`` whose message starts with the
    argument's name (``"dropouth must be in [0, 1), got 1.0"``) if one is not in [0, 1).

    Its state dict holds ``embed_tokens.weight``, ``layers.<i>.*`` and
    ``dictionary_fingerprint``.
    """

    def __init__(self, embed_tokens: nn.Embedding, layers: Sequence[nn.Module],
                 dropout: float = 0.0, dropouth: float = 0.0, dropouti: float = 0.0,
                 dropoute: float = 0.0, fingerprint: int = 0):
        super().__init__()
        if not layers:
            raise ValueError("AWDEncoder needs at least one recurrent layer")
        for name, p in (("dropout", dropout), ("dropouth", dropouth), ("dropouti", dropouti),
                        ("dropoute", dropoute)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        self.dropout, self.dropouth, self.dropouti, self.dropoute = (
            dropout, dropouth, dropouti, dropoute)
        self.embed_tokens = embed_tokens
        self.layers = nn.ModuleList(layers)
        self.locked_dropout = LockedDropout()
        self.register_buffer("dictionary_fingerprint", torch.tensor(int(fingerprint)))
        nn.init.uniform_(self.embed_tokens.weight, -0.1, 0.1)

    def forward(self, tokens: torch.Tensor, state: Optional[LayerStates] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, LayerStates]:
        """Run the stack on ``tokens (B, T)``, each layer from its entry of ``state``
        (None: every layer from zeros).

        Returns ``(dropped_output, raw_output, new_state)``: the top layer's output after
        and before its locked dropout, each ``(T, B, C)``, and every layer's state after
        the last step.
        """
        x = embedding_dropout(self.embed_tokens, tokens.t(), self.dropoute, self.training)
        x = self.locked_dropout(x, self.dropouti)
        new_state = []
        for i, layer in enumerate(self.layers):
            x, layer_state = layer(x, None if state is None else state[i])
            new_state.append(layer_state)
            if i < len(self.layers) - 1:
                x = self.locked_dropout(x, self.dropouth)
        return self.locked_dropout(x, self.dropout), x, new_state
