"""Plain-PyTorch building blocks of AWD-LSTM and AWD-QRNN; none of them imports fairseq."""

from .adaptive_softmax import TiedAdaptiveSoftmax
from .awd_encoder import AWDEncoder, LayerStates
from .cache_pointer import CacheAttention, ContinuousCache, mix_with_cache
from .concat_pooling import PoolingClassifierHead, concat_pool
from .drop_connect import drop_connect
from .embedding_dropout import embedding_dropout
from .forget_mult import forget_mult, forget_mult_reference
from .locked_dropout import LockedDropout
from .mixture_of_softmaxes import MixtureOfSoftmaxes
from .output_heads import AdaptiveSoftmaxHead, MixtureOfSoftmaxesHead, OutputHead, SoftmaxHead
from .qrnn import QRNN, QRNNLayer, QRNNLayerState, QRNNState
from .regularization import activation_regularization, temporal_activation_regularization
from .reverse_padded import reverse_padded
from .softmax_nll import softmax_nll
from .weight_drop import WeightDropLSTM

__all__ = [
    "AWDEncoder",
    "AdaptiveSoftmaxHead",
    "CacheAttention",
    "ContinuousCache",
    "LayerStates",
    "LockedDropout",
    "MixtureOfSoftmaxes",
    "MixtureOfSoftmaxesHead",
    "OutputHead",
    "PoolingClassifierHead",
    "QRNN",
    "QRNNLayer",
    "QRNNLayerState",
    "QRNNState",
    "SoftmaxHead",
    "TiedAdaptiveSoftmax",
    "WeightDropLSTM",
    "activation_regularization",
    "concat_pool",
    "drop_connect",
    "embedding_dropout",
    "forget_mult",
    "forget_mult_reference",
    "mix_with_cache",
    "reverse_padded",
    "softmax_nll",
    "temporal_activation_regularization",
]
