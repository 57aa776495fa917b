"""ULMFiT's concat pooling and classifier head (Howard and Ruder 2018, arXiv 1801.06146,
section 3.3)."""

import torch
import torch.nn.functional as F
from torch import nn


def concat_pool(outputs: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """ULMFiT eq. 5: ``h_c = [h_T, maxpool(H), meanpool(H)]``.

    ``outputs`` ``(T, B, C)`` are the top layer's hidden states ``H``; ``padding_mask``
    ``(B, T)`` is True at padded positions, which never enter any of the three parts.
    ``h_T`` is the output at each sequence's last non-pad position, found from the mask
    (whatever side the padding is on). Returns ``(B, 3C)``. Every sequence needs at least
    one non-pad position.
    """
    if outputs.dim() != 3 or padding_mask.shape != (outputs.size(1), outputs.size(0)):
        raise ValueError(f"concat_pool expects outputs (T, B, C) and padding_mask (B, T), got "
                         f"{tuple(outputs.shape)} and {tuple(padding_mask.shape)}")
    valid = ~padding_mask.t().unsqueeze(-1)  # (T, B, 1)
    lengths = valid.sum(0)  # (B, 1)
    if bool(lengths.eq(0).any()):
        raise ValueError("concat_pool: a sequence has no non-pad position")
    steps = torch.arange(outputs.size(0), device=outputs.device).view(-1, 1, 1)
    last = torch.where(valid, steps, -1).amax(0)  # (B, 1): index of the last valid step
    h_last = outputs.gather(0, last.unsqueeze(0).expand(1, -1, outputs.size(2))).squeeze(0)
    h_max = outputs.masked_fill(~valid, float("-inf")).amax(0)
    h_mean = outputs.masked_fill(~valid, 0.0).sum(0) / lengths.to(outputs.dtype)
    return torch.cat([h_last, h_max, h_mean], dim=-1)


class BatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that normalizes a training batch of one example with its running
    statistics (batch statistics of one example are undefined; torch raises)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.size(0) == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        return super().forward(x)


class PoolingClassifierHead(nn.Sequential):
    """ULMFiT's classifier on the concat-pooled features ``(B, input_dim)`` -> logits
    ``(B, num_classes)``: two blocks of batch normalization, dropout and a linear layer,
    with a ReLU between them (``BN -> Dropout(input_dropout) -> Linear(input_dim, hidden)
    -> ReLU -> BN -> Dropout(dropout) -> Linear(hidden, num_classes)``)."""

    def __init__(self, input_dim: int, hidden_dim: int, num_classes: int,
                 input_dropout: float = 0.4, dropout: float = 0.1):
        super().__init__(
            BatchNorm1d(input_dim), nn.Dropout(input_dropout), nn.Linear(input_dim, hidden_dim),
            nn.ReLU(), BatchNorm1d(hidden_dim), nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )

    @property
    def num_classes(self) -> int:
        return self[-1].out_features
