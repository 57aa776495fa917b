"""QRNN layer and stack (fairseq_awd.modules.qrnn) against hand-written step-by-step
references built from the layer's own weights."""

import pytest
import torch
import torch.nn.functional as F

from fairseq_awd.modules import QRNN, QRNNLayer, QRNNLayerState, QRNNState, drop_connect

T, B, IN, HID = 7, 3, 4, 5


def inputs(seed=1, steps=T, batch=B, size=IN):
    return torch.randn(steps, batch, size, generator=torch.Generator().manual_seed(seed))


def make_layer(seed=0, **kwargs) -> QRNNLayer:
    torch.manual_seed(seed)
    layer = QRNNLayer(IN, HID, **kwargs)
    layer.eval()
    return layer


def step_by_step(layer: QRNNLayer, x, cell=None, previous=None, weight=None, keep=None):
    """The QRNN equations one step at a time (eqs. 1-4 of the paper, window 1 or 2)."""
    weight = layer.linear.weight if weight is None else weight
    c = torch.zeros(x.size(1), HID) if cell is None else cell
    prev = torch.zeros(x.size(1), IN) if previous is None else previous
    outputs = []
    for t in range(x.size(0)):
        source = torch.cat([prev, x[t]], -1) if layer.window == 2 else x[t]
        gates = F.linear(source, weight, layer.linear.bias).chunk(len(layer.pooling) + 1, -1)
        z, f = torch.tanh(gates[0]), torch.sigmoid(gates[1])
        if keep is not None:
            f = f * keep[t]
        i = f if layer.pooling != "ifo" else torch.sigmoid(gates[3]) * (1 if keep is None
                                                                         else keep[t])
        c = i * z + (1 - f) * c
        outputs.append(c if layer.pooling == "f" else torch.sigmoid(gates[2]) * c)
        prev = x[t]
    return torch.stack(outputs), c


@pytest.mark.parametrize("pooling", ["f", "fo", "ifo"])
@pytest.mark.parametrize("window", [1, 2])
def test_layer_matches_step_by_step(pooling, window):
    layer = make_layer(window=window, pooling=pooling)
    x = inputs()
    cell = torch.randn(1, B, HID)
    out, state = layer(x, QRNNLayerState(cell, torch.zeros(1, B, IN)))
    expected, last = step_by_step(layer, x, cell[0])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(state.cell[0], last)
    assert torch.equal(state.last_input, x[-1:])


def test_window_two_remembers_the_last_input_of_the_previous_call():
    layer = make_layer(window=2)
    x = inputs()
    whole, _ = layer(x)
    first, state = layer(x[:3])
    continued, _ = layer(x[3:], state)
    torch.testing.assert_close(torch.cat([first, continued]), whole)
    # a stream boundary (no state) starts from a zero window, not from x[2]
    fresh, _ = layer(x[3:])
    expected, _ = step_by_step(layer, x[3:])
    torch.testing.assert_close(fresh, expected)
    assert not torch.allclose(fresh[0], continued[0], atol=1e-4)


def test_weight_drop_uses_one_dropped_matrix_in_training_and_raw_in_eval():
    layer = make_layer(weight_drop=0.5)
    layer.train()
    x = inputs()
    torch.manual_seed(5)
    out, _ = layer(x)
    torch.manual_seed(5)
    dropped = drop_connect(layer.linear.weight, 0.5)
    expected, _ = step_by_step(layer, x, weight=dropped)
    torch.testing.assert_close(out, expected)
    out.sum().backward()  # the raw matrix is the parameter and gets the gradient
    assert layer.linear.weight.grad is not None
    assert torch.all(layer.linear.weight.grad[dropped == 0] == 0)
    layer.eval()
    torch.testing.assert_close(layer(x)[0], step_by_step(layer, x)[0])


@pytest.mark.parametrize("pooling", ["fo", "ifo"])
def test_zoneout_masks_gates_in_training_and_scales_them_in_eval(pooling):
    layer = make_layer(zoneout=0.25, pooling=pooling)
    x = inputs()
    layer.train()
    torch.manual_seed(9)
    out, _ = layer(x)
    torch.manual_seed(9)
    keep = torch.empty(T, B, HID).bernoulli_(0.75)
    torch.testing.assert_close(out, step_by_step(layer, x, keep=keep)[0])
    layer.eval()
    torch.testing.assert_close(layer(x)[0], step_by_step(layer, x, keep=torch.full((T, B, HID),
                                                                                   0.75))[0])


@pytest.mark.parametrize("window", [1, 2])
def test_reverse_layer_is_the_forward_layer_on_the_flipped_sequence(window):
    forward_layer = make_layer(window=window)
    reverse_layer = make_layer(window=window, reverse=True)
    x = inputs()
    out, state = reverse_layer(x)
    flipped, flipped_state = forward_layer(x.flip(0))
    torch.testing.assert_close(out, flipped.flip(0))
    torch.testing.assert_close(state.cell, flipped_state.cell)


@pytest.mark.parametrize("window", [1, 2])
def test_bidirectional_stack_ignores_right_padding(window):
    torch.manual_seed(0)
    qrnn = QRNN(IN, HID, num_layers=2, window=window, bidirectional=True).eval()
    x = inputs()
    lengths = [T, 4, 2]
    mask = torch.arange(T).unsqueeze(1) < torch.tensor(lengths)
    padded = x.masked_fill(~mask.unsqueeze(-1), 3.0)  # garbage in the padding
    out, _ = qrnn(padded, mask=mask)
    assert out.shape == (T, B, 2 * HID)
    for b, length in enumerate(lengths):
        alone, _ = qrnn(x[:length, b : b + 1])
        torch.testing.assert_close(out[:length, b : b + 1], alone)


def test_stack_follows_the_lstm_call_convention():
    torch.manual_seed(0)
    qrnn = QRNN(IN, HID, num_layers=3, window=[2, 1, 1], dropout=0.0, batch_first=True).eval()
    x = inputs().transpose(0, 1)  # (B, T, IN)
    out, state = qrnn(x)
    assert out.shape == (B, T, HID)
    assert isinstance(state, QRNNState) and state.cell.shape == (3, B, HID)
    # continuing with the returned state equals one call on the whole sequence
    first, mid = qrnn(x[:, :4])
    second, _ = qrnn(x[:, 4:], mid)
    torch.testing.assert_close(torch.cat([first, second], 1), out)
    # a plain tensor is taken as the initial cell (as nn.GRU's h_0), with zero windows
    h0 = torch.randn(3, B, HID)
    with_tensor, _ = qrnn(x, h0)
    with_state, _ = qrnn(x, QRNNState(h0, tuple(torch.zeros(1, B, n) for n in (IN, HID, HID))))
    torch.testing.assert_close(with_tensor, with_state)


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: QRNNLayer(IN, HID, window=3), "window must be 1 or 2"),
        (lambda: QRNNLayer(IN, HID, pooling="io"), "pooling must be one of"),
        (lambda: QRNNLayer(IN, HID, zoneout=1.0), "zoneout must be in"),
        (lambda: QRNN(IN, HID, num_layers=2, window=[2]), "2 layers"),
    ],
)
def test_bad_options_raise(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_state_and_input_shapes_raise():
    layer = make_layer(window=2)
    x = inputs()
    with pytest.raises(ValueError, match=r"state cell has shape \(1, 2, 5\), expected \(1, 3, 5\)"):
        layer(x, QRNNLayerState(torch.zeros(1, 2, HID), torch.zeros(1, B, IN)))
    with pytest.raises(ValueError, match="state last_input has shape"):
        layer(x, QRNNLayerState(torch.zeros(1, B, HID), torch.zeros(1, B, IN + 1)))
    with pytest.raises(ValueError, match="expects 4 input features, got 6"):
        layer(inputs(size=6))
    with pytest.raises(ValueError, match="mask shape"):
        layer(x, mask=torch.ones(T, B + 1, dtype=torch.bool))
    qrnn = QRNN(IN, HID, num_layers=2)
    with pytest.raises(ValueError, match=r"expected \(layers \* directions, batch, hidden\)"):
        qrnn(x, torch.zeros(1, B, HID))
