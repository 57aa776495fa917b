"""Weight-dropped LSTM (DropConnect on the recurrent matrix; Merity et al. 2017, section 2)."""

from typing import Optional, Tuple

import torch
from torch import nn
from torch.func import functional_call

from .drop_connect import drop_connect

LSTMState = Tuple[torch.Tensor, torch.Tensor]


class WeightDropLSTM(nn.Module):
    """A one-layer, time-major ``nn.LSTM`` with DropConnect on ``W_hh``.

    In training, every forward pass draws a fresh Bernoulli mask for the
    hidden-to-hidden matrix ``U = [U_i; U_f; U_g; U_o]`` (shape ``(4H, H)``), i.e.
    ``U' = U * M / (1 - p)``, and runs the whole sequence through ``nn.LSTM`` with
    ``U'``: the same dropped matrix at every time step, computed by the library's
    fused kernel (cuDNN on GPU), with no Python loop over time. The raw matrix is
    the only parameter and receives the gradient through the mask. In eval mode
    the raw weights are used unchanged.

    Shapes: input ``(T, B, input_size)``; state ``(h, c)`` each ``(1, B, hidden_size)``;
    output ``(T, B, hidden_size)``.
    """

    def __init__(self, input_size: int, hidden_size: int, weight_dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= weight_dropout < 1.0:
            raise ValueError(f"weight dropout must be in [0, 1), got {weight_dropout}")
        self.lstm = nn.LSTM(input_size, hidden_size)
        self.weight_dropout = weight_dropout

    @property
    def hidden_size(self) -> int:
        return self.lstm.hidden_size

    def forward(
        self, x: torch.Tensor, state: Optional[LSTMState] = None
    ) -> Tuple[torch.Tensor, LSTMState]:
        if not (self.training and self.weight_dropout > 0):
            return self.lstm(x, state)
        dropped = drop_connect(self.lstm.weight_hh_l0, self.weight_dropout)
        return functional_call(self.lstm, {"weight_hh_l0": dropped}, (x, state))
