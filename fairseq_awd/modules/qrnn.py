"""Quasi-recurrent layers (Bradbury, Merity, Xiong and Socher 2017, arXiv 1611.01576).

A QRNN layer computes all gates for all time steps with one matrix product over a
window of inputs (eq. 1: a masked convolution of width 1 or 2), then runs the cheap
element-wise recurrence ForgetMult (section 2.1, pooling). Time-major throughout.
"""

import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .drop_connect import drop_connect
from .forget_mult import check_mask, forget_mult

POOLINGS = {"f": 2, "fo": 3, "ifo": 4}  # pooling -> number of gate blocks (z, f, o, i)


class QRNNLayerState(NamedTuple):
    """What a layer carries between calls: ``cell (1, B, H)`` and ``last_input (1, B, C)``."""

    cell: torch.Tensor
    last_input: torch.Tensor


class QRNNLayer(nn.Module):
    """One QRNN layer.

    With window 2 the gates at step t see ``[x_{t-1}; x_t]``; ``x_{-1}`` is the last input
    of the previous call when its state is passed back (a continuing stream) and zeros
    otherwise (a stream boundary). Pooling (``c`` is the recurrent state):

    * ``f``:   ``c_t = f_t * z_t + (1 - f_t) * c_{t-1}``,  ``h_t = c_t``
    * ``fo``:  as ``f``, and ``h_t = o_t * c_t`` (output gate)
    * ``ifo``: ``c_t = i_t * z_t + (1 - f_t) * c_{t-1}``, ``h_t = o_t * c_t``
      (``1 - f`` plays the paper's forget gate)

    ``z = tanh``, gates ``sigmoid``. Zoneout keeps a unit's state with probability
    ``zoneout`` by zeroing its ``f`` (and ``i``) in training and scales them by
    ``1 - zoneout`` in evaluation (its expectation). ``weight_drop`` is DropConnect on
    the gate projection, as in AWD-QRNN (Merity et al. 2018, arXiv 1803.08240).
    ``reverse=True`` runs right to left: the window then looks at ``x_{t+1}`` and
    nothing is remembered across calls but the cell.

    ``init_gain``: 0 keeps PyTorch's default initialization of the gate projection
    (weights and biases uniform in ``±1/sqrt(fan_in)``, as the reference
    salesforce/pytorch-qrnn); ``g > 0`` draws the weights uniformly with standard
    deviation ``g / sqrt(fan_in)`` (``fan_in = window * input_size``) and zeroes the
    biases. With the default init the gates' pre-activations have a third of the input's
    variance and pooling (``f ~ 0.5``) and the output gate (``o ~ 0.5``) take away most of
    the rest, so the part of a layer's output that depends on the input shrinks 4-7x per
    layer while the bias-driven constant part does not: a 4-layer language model starts
    out (and, under the AWD papers' SGD with tight clipping, stays for most of the first
    PTB epoch) near the unigram model. ``g ~ 3.5`` keeps that part's scale from layer to
    layer at initialization; ``g = 2`` (the AWD-QRNN models' default) trains best of those
    tried (docs/qrnn-learning.md).

    Shapes: input ``(T, B, input_size)``, optional ``mask (T, B)`` bool (True at real
    tokens; padded steps leave the state unchanged), output ``(T, B, hidden_size)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        window: int = 1,
        pooling: str = "fo",
        zoneout: float = 0.0,
        weight_drop: float = 0.0,
        reverse: bool = False,
        init_gain: float = 0.0,
    ):
        super().__init__()
        if window not in (1, 2):
            raise ValueError(f"QRNN window must be 1 or 2, got {window}")
        if pooling not in POOLINGS:
            raise ValueError(f"QRNN pooling must be one of {sorted(POOLINGS)}, got {pooling!r}")
        for name, p in (("zoneout", zoneout), ("weight_drop", weight_drop)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"QRNN {name} must be in [0, 1), got {p}")
        if not init_gain >= 0:  # NaN too
            raise ValueError(f"QRNN init_gain must be non-negative (0: PyTorch's default init), "
                             f"got {init_gain}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.window, self.pooling, self.reverse = window, pooling, reverse
        self.zoneout, self.weight_drop = zoneout, weight_drop
        self.linear = nn.Linear(window * input_size, POOLINGS[pooling] * hidden_size)
        if init_gain > 0:
            # uniform in +-bound has standard deviation gain / sqrt(fan_in)
            bound = init_gain * math.sqrt(3.0 / (window * input_size))
            nn.init.uniform_(self.linear.weight, -bound, bound)
            nn.init.zeros_(self.linear.bias)

    def forward(
        self,
        x: torch.Tensor,
        state: Optional[QRNNLayerState] = None,
        mask: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, QRNNLayerState]:
        steps, batch, size = x.shape
        if state is not None:
            state = QRNNLayerState(*state)  # also takes a plain (cell, last_input) pair
        if size != self.input_size:
            raise ValueError(f"QRNN layer expects {self.input_size} input features, got {size}")
        self._check_state(state, batch)
        if mask is not None:
            check_mask(mask, x)
            # Padding must not leak into a real step's window (x_{t+1} when reversed).
            x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        source = x
        if self.window == 2:
            if self.reverse:
                neighbour = torch.cat([x[1:], x.new_zeros(1, batch, size)])
            else:
                first = x.new_zeros(1, batch, size) if state is None else state.last_input
                neighbour = torch.cat([first, x[:-1]])
            source = torch.cat([neighbour, x], dim=-1)
        weight = self.linear.weight
        if self.training and self.weight_drop > 0:
            weight = drop_connect(weight, self.weight_drop)
        gates = F.linear(source, weight, self.linear.bias).chunk(POOLINGS[self.pooling], dim=-1)
        z = torch.tanh(gates[0])
        f = torch.sigmoid(gates[1])
        i = torch.sigmoid(gates[3]) if self.pooling == "ifo" else None
        f, i = self._zoneout(f, i)
        cell = forget_mult(
            f, z, None if state is None else state.cell[0],
            input_gate=i, reverse=self.reverse, mask=mask,
        )
        h = cell if self.pooling == "f" else torch.sigmoid(gates[2]) * cell
        final = cell[:1] if self.reverse else cell[-1:]
        return h, QRNNLayerState(final, x[-1:])

    def _zoneout(self, f, i):
        if self.zoneout == 0:
            return f, i
        if self.training:
            keep = f.new_empty(f.shape).bernoulli_(1 - self.zoneout)
        else:
            keep = 1 - self.zoneout
        return f * keep, None if i is None else i * keep

    def _check_state(self, state: Optional[QRNNLayerState], batch: int) -> None:
        if state is None:
            return
        expected = {"cell": (1, batch, self.hidden_size), "last_input": (1, batch, self.input_size)}
        for name, shape in expected.items():
            got = tuple(getattr(state, name).shape)
            if got != shape:
                raise ValueError(f"QRNN state {name} has shape {got}, expected {shape}")


class QRNNState(NamedTuple):
    """State of a ``QRNN`` stack: ``cell (L * D, B, H)`` like ``nn.GRU``'s ``h_n``, and
    each layer-direction's last input (for window-2 layers continuing a stream)."""

    cell: torch.Tensor
    last_inputs: Tuple[torch.Tensor, ...]


class QRNN(nn.Module):
    """A stack of QRNN layers with ``nn.LSTM``'s call convention.

    ``output, state = qrnn(input, state)`` with input ``(T, B, input_size)`` (or
    ``(B, T, input_size)`` with ``batch_first``), output ``(T, B, D * hidden_size)``
    and ``state`` a ``QRNNState``; a plain ``(L * D, B, H)`` tensor is accepted as the
    initial cell, as ``nn.GRU`` takes ``h_0``. ``window`` is one value for all layers
    or one per layer; ``dropout`` is applied between layers, as in ``nn.LSTM``;
    ``init_gain`` is every layer's (see ``QRNNLayer``).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        window: Union[int, Sequence[int]] = 1,
        pooling: str = "fo",
        zoneout: float = 0.0,
        weight_drop: float = 0.0,
        dropout: float = 0.0,
        bidirectional: bool = False,
        batch_first: bool = False,
        init_gain: float = 0.0,
    ):
        super().__init__()
        windows = [window] * num_layers if isinstance(window, int) else list(window)
        if len(windows) != num_layers:
            raise ValueError(f"got {len(windows)} windows for {num_layers} layers")
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.directions = 2 if bidirectional else 1
        self.dropout, self.batch_first = dropout, batch_first
        self.layers = nn.ModuleList()
        for layer, layer_window in enumerate(windows):
            size = input_size if layer == 0 else hidden_size * self.directions
            for direction in range(self.directions):
                self.layers.append(
                    QRNNLayer(size, hidden_size, layer_window, pooling, zoneout, weight_drop,
                              reverse=direction == 1, init_gain=init_gain)
                )

    def forward(
        self,
        input: torch.Tensor,
        state: Union[None, torch.Tensor, QRNNState] = None,
        mask: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, QRNNState]:
        x = input.transpose(0, 1) if self.batch_first else input
        if mask is not None and self.batch_first:
            mask = mask.transpose(0, 1)
        cells, last_inputs = self._split_state(state, x.size(1))
        new_cells, new_inputs = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.directions):
                k = layer * self.directions + direction
                layer_state = None
                if cells is not None:
                    layer_state = QRNNLayerState(cells[k : k + 1], last_inputs[k])
                out, new_state = self.layers[k](x, layer_state, mask)
                outputs.append(out)
                new_cells.append(new_state.cell)
                new_inputs.append(new_state.last_input)
            x = torch.cat(outputs, dim=-1) if self.directions == 2 else outputs[0]
            if layer < self.num_layers - 1 and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
        output = x.transpose(0, 1) if self.batch_first else x
        return output, QRNNState(torch.cat(new_cells), tuple(new_inputs))

    def _split_state(self, state, batch: int):
        if state is None:
            return None, None
        cells = state.cell if isinstance(state, QRNNState) else state
        expected = (self.num_layers * self.directions, batch, self.hidden_size)
        if tuple(cells.shape) != expected:
            raise ValueError(f"QRNN initial state has shape {tuple(cells.shape)}, "
                             f"expected (layers * directions, batch, hidden) = {expected}")
        if isinstance(state, QRNNState):
            return cells, state.last_inputs
        inputs = []  # no remembered inputs: window-2 layers start from zeros
        for layer in self.layers:
            inputs.append(cells.new_zeros(1, batch, layer.input_size))
        return cells, inputs
