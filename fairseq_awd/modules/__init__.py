"""Plain-PyTorch building blocks of AWD-LSTM; none of them imports fairseq."""

from .embedding_dropout import embedding_dropout
from .locked_dropout import LockedDropout
from .regularization import activation_regularization, temporal_activation_regularization
from .weight_drop import WeightDropLSTM

__all__ = [
    "LockedDropout",
    "WeightDropLSTM",
    "activation_regularization",
    "embedding_dropout",
    "temporal_activation_regularization",
]
