"""Activation regularization (AR) and temporal activation regularization (TAR).

Merity, McCann and Socher 2017 ("Revisiting Activation Regularization for Language
RNNs"); Merity et al. 2017, section 4.6, equations (AR) ``alpha * L2(m * h_t)`` and
(TAR) ``beta * L2(h_t - h_{t+1})``, both taken as means over all elements as in the
reference implementation.
"""

import torch


def activation_regularization(dropped_output: torch.Tensor, alpha: float) -> torch.Tensor:
    """AR: ``alpha * mean(h^2)`` over the *dropped* output of the last layer.

    Args:
        dropped_output: ``(T, B, C)`` last-layer output after locked dropout.
        alpha: AR weight; 0 returns a zero scalar.
    """
    if alpha == 0:
        return dropped_output.new_zeros(())
    return alpha * dropped_output.pow(2).mean()


def temporal_activation_regularization(raw_output: torch.Tensor, beta: float) -> torch.Tensor:
    """TAR: ``beta * mean((h_{t+1} - h_t)^2)`` over the *undropped* last-layer output.

    Args:
        raw_output: ``(T, B, C)`` last-layer output before dropout (time-major).
        beta: TAR weight; 0, or a single time step, returns a zero scalar.
    """
    if beta == 0 or raw_output.size(0) < 2:
        return raw_output.new_zeros(())
    return beta * (raw_output[1:] - raw_output[:-1]).pow(2).mean()
