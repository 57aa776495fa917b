"""Tests of the plain-PyTorch AWD-LSTM building blocks (fairseq_awd.modules).

Every check compares against a hand computation or a reference built from stock
PyTorch (``nn.LSTM``, ``F.embedding``) with the same random draws.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fairseq_awd.modules import (
    AWDEncoder,
    LockedDropout,
    QRNNLayer,
    WeightDropLSTM,
    activation_regularization,
    drop_connect,
    embedding_dropout,
    temporal_activation_regularization,
)

IN, HID, T, B = 3, 4, 6, 2


def close(a, b, atol=1e-6):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


def make_wd(p: float, seed: int = 0) -> WeightDropLSTM:
    torch.manual_seed(seed)
    return WeightDropLSTM(IN, HID, p)


def plain_lstm_like(wd: WeightDropLSTM, weight_hh=None) -> nn.LSTM:
    """An ``nn.LSTM`` with ``wd``'s weights, optionally with ``weight_hh_l0`` replaced."""
    ref = nn.LSTM(IN, HID)
    ref.load_state_dict(wd.lstm.state_dict())
    if weight_hh is not None:
        with torch.no_grad():
            ref.weight_hh_l0.copy_(weight_hh)
    return ref


def inputs(seed: int = 1, steps: int = T):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, B, IN, generator=g)
    state = (torch.randn(1, B, HID, generator=g), torch.randn(1, B, HID, generator=g))
    return x, state


# ---------------------------------------------------------------- WeightDropLSTM


def test_weight_drop_training_equals_lstm_with_dropped_matrix():
    p = 0.5
    wd = make_wd(p)
    wd.train()
    x, state = inputs()
    torch.manual_seed(123)
    out, (h, c) = wd(x, state)
    torch.manual_seed(123)
    dropped = drop_connect(wd.lstm.weight_hh_l0.detach(), p)
    assert (dropped == 0).any() and (dropped != 0).any()
    ref = plain_lstm_like(wd, dropped)
    ref_out, (ref_h, ref_c) = ref(x, state)
    close(out, ref_out)
    close(h, ref_h)
    close(c, ref_c)
    # the mask matters: the raw-weight LSTM gives something else
    raw_out, _ = plain_lstm_like(wd)(x, state)
    assert not torch.allclose(out, raw_out, atol=1e-4)


def test_weight_drop_long_sequence_one_fused_call(monkeypatch):
    """T=50 in one call matches nn.LSTM with the dropped matrix, via exactly one _VF.lstm call."""
    p = 0.3
    wd = make_wd(p)
    wd.train()
    x, state = inputs(steps=50)
    real_lstm = torch._VF.lstm
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return real_lstm(*args, **kwargs)

    monkeypatch.setattr(torch._VF, "lstm", counting)
    torch.manual_seed(7)
    out, _ = wd(x, state)
    assert len(calls) == 1
    torch.manual_seed(7)
    dropped = drop_connect(wd.lstm.weight_hh_l0.detach(), p)
    calls.clear()
    wd.eval()
    wd(x, state)
    assert len(calls) == 1
    monkeypatch.undo()
    ref_out, _ = plain_lstm_like(wd, dropped)(x, state)
    close(out, ref_out, atol=1e-5)


def test_weight_drop_fresh_mask_every_forward():
    wd = make_wd(0.5)
    wd.train()
    x, state = inputs()
    out1, _ = wd(x, state)
    out2, _ = wd(x, state)
    assert not torch.allclose(out1, out2, atol=1e-4)


def test_weight_drop_gradient_reaches_raw_matrix_through_mask():
    p = 0.5
    wd = make_wd(p)
    wd.train()
    x, state = inputs()
    g = torch.Generator().manual_seed(5)
    upstream = torch.randn(T, B, HID, generator=g)
    torch.manual_seed(11)
    out, _ = wd(x, state)
    (out * upstream).sum().backward()
    grad = wd.lstm.weight_hh_l0.grad
    assert grad is not None

    torch.manual_seed(11)
    mask = drop_connect(torch.ones_like(wd.lstm.weight_hh_l0), p)
    dropped_pos = mask == 0
    assert dropped_pos.any() and (~dropped_pos).any()
    assert torch.all(grad[dropped_pos] == 0)
    assert torch.all(grad[~dropped_pos] != 0)

    # chain rule: d/dW_raw = d/dW_dropped * mask/(1-p)
    ref = plain_lstm_like(wd, wd.lstm.weight_hh_l0.detach() * mask)
    ref_out, _ = ref(x, state)
    (ref_out * upstream).sum().backward()
    close(grad, ref.weight_hh_l0.grad * mask, atol=1e-6)
    # the other weights get their ordinary gradient
    close(wd.lstm.weight_ih_l0.grad, ref.weight_ih_l0.grad, atol=1e-6)


def test_weight_drop_eval_uses_raw_weights():
    wd = make_wd(0.5)
    wd.eval()
    x, state = inputs()
    out, (h, c) = wd(x, state)
    ref_out, (ref_h, ref_c) = plain_lstm_like(wd)(x, state)
    close(out, ref_out)
    close(h, ref_h)
    close(c, ref_c)
    out_no_state, _ = wd(x)
    close(out_no_state, plain_lstm_like(wd)(x)[0])


def test_weight_drop_p0_is_plain_lstm_in_training():
    wd = make_wd(0.0)
    wd.train()
    x, state = inputs()
    out1, _ = wd(x, state)
    out2, _ = wd(x, state)
    ref_out, _ = plain_lstm_like(wd)(x, state)
    close(out1, ref_out)
    close(out2, ref_out)


def test_weight_drop_has_only_lstm_parameters():
    wd = make_wd(0.5)
    plain = nn.LSTM(IN, HID)
    assert set(wd.state_dict()) == {f"lstm.{k}" for k in plain.state_dict()}
    assert sum(p.numel() for p in wd.parameters()) == sum(p.numel() for p in plain.parameters())
    assert len(list(wd.parameters())) == 4
    assert wd.hidden_size == HID


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_weight_drop_invalid_p(p):
    with pytest.raises(ValueError):
        WeightDropLSTM(IN, HID, p)


# ---------------------------------------------------------------- embedding dropout


def make_embed(vocab: int = 20, dim: int = 6, seed: int = 0) -> nn.Embedding:
    torch.manual_seed(seed)
    return nn.Embedding(vocab, dim)


def test_embedding_dropout_drops_whole_words_and_scales_kept():
    p = 0.5
    embed = make_embed()
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 20, (4, 10), generator=g)
    torch.manual_seed(2)
    out = embedding_dropout(embed, tokens, p, True)
    assert out.shape == (4, 10, 6)
    weight = embed.weight.detach()
    dropped_words, kept_words = set(), set()
    for idx in tokens.unique().tolist():
        rows = out[tokens == idx]  # every occurrence of word idx
        assert rows.size(0) >= 1
        if torch.all(rows == 0):
            dropped_words.add(idx)
        else:
            kept_words.add(idx)
            expected = (weight[idx] / (1 - p)).expand_as(rows)
            torch.testing.assert_close(rows, expected, rtol=1e-6, atol=0)
    assert dropped_words and kept_words
    # at least one repeated word in each group, so "together" is really exercised
    counts = {i: int((tokens == i).sum()) for i in tokens.unique().tolist()}
    assert any(counts[i] > 1 for i in dropped_words)
    assert any(counts[i] > 1 for i in kept_words)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_embedding_dropout_fraction_of_dropped_types(p):
    vocab = 20000
    embed = nn.Embedding(vocab, 1)
    with torch.no_grad():
        embed.weight.fill_(1.0)
    torch.manual_seed(4)
    out = embedding_dropout(embed, torch.arange(vocab), p, True)
    frac = (out == 0).float().mean().item()
    assert abs(frac - p) < 0.02  # std is about 0.0035
    assert torch.all((out == 0) | torch.isclose(out, torch.tensor(1 / (1 - p))))


def test_embedding_dropout_eval_and_p0_are_plain_lookup():
    embed = make_embed()
    tokens = torch.tensor([[1, 2, 1], [19, 0, 2]])
    expected = F.embedding(tokens, embed.weight)
    assert torch.equal(embedding_dropout(embed, tokens, 0.5, False), expected)
    assert torch.equal(embedding_dropout(embed, tokens, 0.0, True), expected)


def test_embedding_dropout_gradient_zero_for_dropped_rows():
    p = 0.4
    embed = make_embed()
    tokens = torch.tensor([[1, 2, 3, 1], [2, 4, 5, 6], [7, 8, 1, 9]])
    torch.manual_seed(8)
    out = embedding_dropout(embed, tokens, p, True)
    out.sum().backward()
    grad = embed.weight.grad
    saw_dropped = saw_kept = False
    for idx in range(20):
        occurrences = int((tokens == idx).sum())
        if occurrences and torch.all(out[tokens == idx] == 0):
            saw_dropped = True
            assert torch.all(grad[idx] == 0)
        elif occurrences:
            saw_kept = True
            close(grad[idx], torch.full((6,), occurrences / (1 - p)))
        else:
            assert torch.all(grad[idx] == 0)
    assert saw_dropped and saw_kept


# ---------------------------------------------------------------- locked dropout


def test_locked_dropout_same_mask_over_time_scaled():
    p = 0.3
    drop = LockedDropout().train()
    torch.manual_seed(0)
    out = drop(torch.ones(7, 4, 50), p)
    for t in range(1, 7):
        assert torch.equal(out[t], out[0])
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)), rtol=1e-6, atol=0)
    assert (out == 0).any()
    # differs across batch elements
    for b in range(1, 4):
        assert not torch.equal(out[0, 0], out[0, b])
    # is a mask times x, not a replacement of x
    torch.manual_seed(0)
    x = torch.randn(7, 4, 50)
    torch.manual_seed(0)
    out_x = drop(x, p)
    close(out_x, x * out)


def test_locked_dropout_keep_fraction():
    p = 0.4
    drop = LockedDropout().train()
    torch.manual_seed(1)
    out = drop(torch.ones(2, 100, 100), p)
    assert abs((out[0] == 0).float().mean().item() - p) < 0.03


def test_locked_dropout_eval_and_p0_identity():
    x = torch.randn(5, 3, 4)
    drop = LockedDropout()
    drop.eval()
    assert torch.equal(drop(x, 0.5), x)
    drop.train()
    assert torch.equal(drop(x, 0.0), x)


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4, 5)])
def test_locked_dropout_rejects_non_3d(shape):
    drop = LockedDropout().train()
    with pytest.raises(ValueError):
        drop(torch.ones(shape), 0.5)


# ---------------------------------------------------------------- the AWD encoder

ENC_V, ENC_E, ENC_H = 20, 5, 7


def make_encoder(kind: str = "lstm", seed: int = 0, **dropouts) -> AWDEncoder:
    """A 2-layer encoder: weight-dropped LSTMs, or QRNN layers (window 2, then 1)."""
    torch.manual_seed(seed)
    embed = nn.Embedding(ENC_V, ENC_E, padding_idx=1)
    if kind == "lstm":
        layers = [WeightDropLSTM(ENC_E, ENC_H, 0.3), WeightDropLSTM(ENC_H, ENC_E, 0.3)]
    else:
        layers = [QRNNLayer(ENC_E, ENC_H, window=2), QRNNLayer(ENC_H, ENC_E)]
    return AWDEncoder(embed, layers, **dropouts)


ENC_DROPOUTS = dict(dropout=0.4, dropouth=0.3, dropouti=0.5, dropoute=0.2)


@pytest.mark.parametrize("kind", ["lstm", "qrnn"])
def test_awd_encoder_is_the_dropouts_around_the_stack(kind):
    """Training-mode outputs equal the stack composed by hand, with the same draws:
    embedding dropout, locked dropout (input), the layers with locked dropout between
    them, locked dropout (output)."""
    encoder = make_encoder(kind, fingerprint=1234, **ENC_DROPOUTS).train()
    tokens = torch.randint(2, ENC_V, (3, 6))  # (B, T)
    torch.manual_seed(5)
    dropped, raw, state = encoder(tokens)
    assert dropped.shape == raw.shape == (6, 3, ENC_E)
    assert len(state) == 2 and all(s[0].size(1) == 3 for s in state)
    torch.manual_seed(5)
    x = embedding_dropout(encoder.embed_tokens, tokens.t(), 0.2, True)
    x = encoder.locked_dropout(x, 0.5)
    x, _ = encoder.layers[0](x, None)
    x = encoder.locked_dropout(x, 0.3)
    x, _ = encoder.layers[1](x, None)
    close(raw, x)
    close(dropped, encoder.locked_dropout(x, 0.4))
    assert set(encoder.state_dict()) == (
        {"embed_tokens.weight", "dictionary_fingerprint"}
        | {f"layers.{k}" for k in encoder.layers.state_dict()})
    assert int(encoder.dictionary_fingerprint) == 1234
    assert encoder.embed_tokens.weight.abs().max() <= 0.1  # the reference's uniform init


@pytest.mark.parametrize("kind", ["lstm", "qrnn"])
def test_awd_encoder_state_continues_the_sequence(kind):
    """In eval mode (no dropout) two calls with the state carried equal one call."""
    encoder = make_encoder(kind, **ENC_DROPOUTS).eval()
    tokens = torch.randint(2, ENC_V, (2, 9))
    whole, whole_raw, _ = encoder(tokens)
    assert torch.equal(whole, whole_raw)
    first, _, state = encoder(tokens[:, :4])
    second, _, _ = encoder(tokens[:, 4:], state)
    close(torch.cat([first, second]), whole, atol=1e-5)


@pytest.mark.parametrize("p", [-0.1, 1.0])
@pytest.mark.parametrize("name", sorted(ENC_DROPOUTS))
def test_awd_encoder_checks_its_rates_once_in_its_constructor(name, p):
    """The rates are checked when the encoder is built (the message starts with the
    argument's name, which the models turn into the option's); ``embedding_dropout`` and
    ``LockedDropout`` do not check them again on every call."""
    with pytest.raises(ValueError, match=rf"^{name} must be in \[0, 1\), got {p}$"):
        AWDEncoder(nn.Embedding(4, 2), [WeightDropLSTM(2, 2, 0.0)], **{name: p})


def test_awd_encoder_needs_a_layer():
    with pytest.raises(ValueError):
        AWDEncoder(nn.Embedding(4, 2), [])


# ---------------------------------------------------------------- AR / TAR


def hand_ar(h, alpha):
    total, count = 0.0, 0
    for t in range(h.size(0)):
        for b in range(h.size(1)):
            for c in range(h.size(2)):
                total += float(h[t, b, c]) ** 2
                count += 1
    return alpha * total / count


def hand_tar(h, beta):
    total, count = 0.0, 0
    for t in range(h.size(0) - 1):
        for b in range(h.size(1)):
            for c in range(h.size(2)):
                total += (float(h[t + 1, b, c]) - float(h[t, b, c])) ** 2
                count += 1
    return beta * total / count


H = torch.tensor(
    [
        [[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]],
        [[0.0, 1.0], [-1.5, 2.0], [1.0, 1.0]],
        [[2.0, 2.0], [0.5, -1.0], [0.0, -3.0]],
    ]
)  # (T=3, B=3, C=2)


def test_ar_hand_computation():
    # sum of squares: 1+4+.25+0+9+1 + 0+1+2.25+4+1+1 + 4+4+.25+1+0+9 = 42.75 over 18
    assert hand_ar(H, 2.0) == pytest.approx(2.0 * 42.75 / 18)
    assert float(activation_regularization(H, 2.0)) == pytest.approx(2.0 * 42.75 / 18)
    assert float(activation_regularization(H, 0.7)) == pytest.approx(hand_ar(H, 0.7))


def test_tar_hand_computation():
    # squared diffs t0->t1: 1+9+4+4+4+0 = 22; t1->t2: 4+1+4+9+1+16 = 35; 57 over 12
    assert hand_tar(H, 1.0) == pytest.approx(57 / 12)
    assert float(temporal_activation_regularization(H, 1.0)) == pytest.approx(57 / 12)
    assert float(temporal_activation_regularization(H, 0.3)) == pytest.approx(hand_tar(H, 0.3))


def test_ar_tar_random_against_loops_and_grad():
    torch.manual_seed(0)
    h = torch.randn(5, 2, 3, requires_grad=True)
    ar = activation_regularization(h, 1.5)
    tar = temporal_activation_regularization(h, 0.5)
    assert float(ar.detach()) == pytest.approx(hand_ar(h.detach(), 1.5), rel=1e-5)
    assert float(tar.detach()) == pytest.approx(hand_tar(h.detach(), 0.5), rel=1e-5)
    ar.backward()
    close(h.grad, 1.5 * 2 * h.detach() / h.numel())


def test_ar_tar_zero_cases():
    assert float(activation_regularization(H, 0.0)) == 0.0
    assert float(temporal_activation_regularization(H, 0.0)) == 0.0
    assert float(temporal_activation_regularization(H[:1], 3.0)) == 0.0
    assert activation_regularization(H, 0.0).dim() == 0
    assert temporal_activation_regularization(H[:1], 3.0).dim() == 0
    assert float(temporal_activation_regularization(torch.ones(4, 2, 2), 3.0)) == 0.0
