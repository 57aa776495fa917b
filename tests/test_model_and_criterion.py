"""Tests of the AWD models (awd_lstm_lm, awd_qrnn_lm) and the awd_cross_entropy criterion.

Decoder behaviour that the two share (tying, dropout, incremental and stream state) is
checked for both; the QRNN runs with a window-2 first layer, so carried state includes
the last input.
"""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.data import Dictionary
from torch import nn

from fairseq_awd.checkpoint_compat import LEGACY_DECODER_ENTRIES
from fairseq_awd.criterions.awd_cross_entropy import AWDCrossEntropyCriterion
from fairseq_awd.dictionary_check import check_dictionary, dictionary_fingerprint
from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.models.awd_lstm_lm import AWDLSTMConfig, AWDLSTMLanguageModel
from fairseq_awd.models.awd_qrnn_lm import AWDQRNNConfig, AWDQRNNLanguageModel
from fairseq_awd.modules import AWDEncoder

E, HID, B, T = 8, 12, 3, 9


def make_dictionary(swap=None) -> Dictionary:
    symbols = [f"w{i}" for i in range(26)]
    if swap is not None:
        i, j = swap
        symbols[i], symbols[j] = symbols[j], symbols[i]
    d = Dictionary()
    for s in symbols:
        d.add_symbol(s)
    return d


DICT = make_dictionary()
V = len(DICT)


def make_task(dictionary=DICT):
    return SimpleNamespace(target_dictionary=dictionary, source_dictionary=dictionary)


MODELS = {
    "lstm": (AWDLSTMConfig, AWDLSTMLanguageModel, {}),
    "qrnn": (AWDQRNNConfig, AWDQRNNLanguageModel, {"qrnn_window": 2}),
}
KINDS = sorted(MODELS)


def make_model(seed=0, dictionary=DICT, kind="lstm", **overrides):
    config_class, model_class, specific = MODELS[kind]
    cfg = dict(
        decoder_embed_dim=E, decoder_hidden_size=HID, decoder_layers=2,
        dropout=0.3, dropouth=0.2, dropouti=0.3, dropoute=0.1, wdrop=0.4, **specific,
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    return model_class.build_model(config_class(**cfg), make_task(dictionary))


def make_tokens(seed=1, batch=B, steps=T):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(DICT.nspecial, V, (batch, steps), generator=g)


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- weight tying


@pytest.mark.parametrize("kind", KINDS)
def test_tied_output_layer_uses_embedding_matrix(kind):
    model = make_model(kind=kind)
    dec = model.decoder
    assert V == 30
    assert dec.output_weight is None
    embedding = dec.encoder.embed_tokens.weight
    assert dec.word_vectors is embedding
    features = torch.randn(4, 2, E)
    close(dec.output_layer(features), F.linear(features, embedding, dec.output_bias))
    # the very same tensor: a change to the embedding shows in the output layer ...
    with torch.no_grad():
        embedding[7].add_(1.0)
    close(dec.output_layer(features), F.linear(features, embedding, dec.output_bias))
    # ... and the output layer's gradient lands on the embedding
    dec.output_layer(features).sum().backward()
    close(embedding.grad, features.reshape(-1, E).sum(0).expand(V, E))
    untied = make_model(untie_weights=True, kind=kind)
    assert n_params(model) == n_params(untied) - V * E


@pytest.mark.parametrize("kind", KINDS)
def test_untied_output_layer_is_separate(kind):
    model = make_model(untie_weights=True, decoder_out_embed_dim=6, kind=kind)
    dec = model.decoder
    assert dec.output_weight is not None
    assert dec.output_weight.shape == (V, 6)
    assert dec.output_weight.data_ptr() != dec.encoder.embed_tokens.weight.data_ptr()
    assert dec.encoder.layers[-1].hidden_size == 6
    model.eval()
    logits, extra = model(make_tokens())
    assert logits.shape == (B, T, V)
    assert extra["raw_output"].shape == (T, B, 6)
    features = extra["dropped_output"]
    close(logits, F.linear(features, dec.output_weight, dec.output_bias).transpose(0, 1))


@pytest.mark.parametrize("kind", KINDS)
def test_tying_with_different_out_dim_raises(kind):
    with pytest.raises(FairseqAWDError) as err:
        make_model(decoder_out_embed_dim=6, kind=kind)
    msg = str(err.value)
    assert "--decoder-out-embed-dim" in msg and "--decoder-embed-dim" in msg
    assert "--untie-weights" in msg


def test_layer_sizes():
    dec = make_model(decoder_layers=3).decoder
    assert [layer.lstm.input_size for layer in dec.encoder.layers] == [E, HID, HID]
    assert [layer.hidden_size for layer in dec.encoder.layers] == [HID, HID, E]
    assert all(layer.weight_dropout == 0.4 for layer in dec.encoder.layers)


@pytest.mark.parametrize("kind,option,value,expected", [
    (kind, option, value, f"--{option} must be in [0, 1), got {value}")
    for kind in KINDS for option in ("dropout", "dropouth", "dropouti", "dropoute", "wdrop")
    for value in (-0.1, 1.0)
] + [
    ("qrnn", "zoneout", 1.0, "--zoneout must be in [0, 1), got 1.0"),
    ("qrnn", "qrnn_window", 3, "--qrnn-window must be 1 or 2, got 3"),
    ("lstm", "dropoutl", 1.5, "--dropoutl must be in [0, 1), got 1.5"),
    ("lstm", "adaptive_softmax_dropout", 1.0,
     "--adaptive-softmax-dropout must be in [0, 1), got 1.0"),
])
def test_an_option_out_of_range_is_one_error_naming_it(kind, option, value, expected):
    """The modules check their arguments in their constructors (once); building the model
    turns that into the error about the option."""
    extra = {"mos_components": 2} if option == "dropoutl" else {}
    if option == "adaptive_softmax_dropout":
        extra = {"adaptive_softmax_cutoff": "10"}
    with pytest.raises(FairseqAWDError) as err:
        make_model(kind=kind, **{option: value}, **extra)
    assert str(err.value) == expected


# ---------------------------------------------------------------- outputs / dropout


@pytest.mark.parametrize("kind", KINDS)
def test_train_mode_dropped_output_is_locked_dropout_of_raw(kind):
    model = make_model(dropout=0.5, kind=kind)
    model.train()
    torch.manual_seed(3)
    logits, extra = model(make_tokens())
    raw, dropped = extra["raw_output"], extra["dropped_output"]
    assert raw.shape == dropped.shape == (T, B, E)
    ratio_kept = dropped != 0
    assert ratio_kept.any() and (~ratio_kept).any()
    close(dropped[ratio_kept], raw[ratio_kept] * 2.0, atol=1e-6)
    # one mask for the whole sequence
    assert torch.equal(ratio_kept, ratio_kept[:1].expand_as(ratio_kept))
    dec = model.decoder
    close(logits, dec.output_layer(dropped).transpose(0, 1), atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_eval_is_deterministic_and_undropped(kind):
    model = make_model(kind=kind)
    model.eval()
    x = make_tokens()
    logits1, extra = model(x)
    logits2, _ = model(x)
    assert torch.equal(logits1, logits2)
    assert torch.equal(extra["raw_output"], extra["dropped_output"])


# ---------------------------------------------------------------- incremental decoding


@pytest.mark.parametrize("kind", KINDS)
def test_incremental_decoding_matches_full_pass(kind):
    model = make_model(kind=kind)
    model.eval()
    x = make_tokens()
    with torch.no_grad():
        full, _ = model(x)
        inc = {}
        steps = [model(x[:, : t + 1], incremental_state=inc)[0] for t in range(T)]
    assert all(s.shape == (B, 1, V) for s in steps)
    close(torch.cat(steps, dim=1), full)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("order", [[2, 0, 1], [1, 1, 0]])
def test_reorder_incremental_state(order, kind):
    model = make_model(kind=kind)
    model.eval()
    x = make_tokens()
    new_order = torch.tensor(order)
    k = 5
    with torch.no_grad():
        inc = {}
        for t in range(k):
            model(x[:, : t + 1], incremental_state=inc)
        model.decoder.reorder_incremental_state_scripting(inc, new_order)
        permuted = x[new_order]
        step, _ = model(permuted[:, : k + 1], incremental_state=inc)
        scratch, _ = model(permuted[:, : k + 1])
    close(step[:, 0], scratch[:, -1])


# ---------------------------------------------------------------- stream carrying


@pytest.mark.parametrize("kind", KINDS)
def test_stream_carrying_equals_one_call(kind):
    model = make_model(kind=kind)
    model.eval()
    x = make_tokens()
    with torch.no_grad():
        full, _ = model(x)
        first, _ = model(x[:, :5], stream_id="s", stream_start=True)
        second, _ = model(x[:, 5:], stream_id="s", stream_start=False)
    close(torch.cat([first, second], dim=1), full)
    # another stream id does not interfere
    with torch.no_grad():
        model(x[:, :5], stream_id="s", stream_start=True)
        model(x[:, 2:], stream_id="other", stream_start=True)
        second_again, _ = model(x[:, 5:], stream_id="s", stream_start=False)
    close(second_again, second)


@pytest.mark.parametrize("kind", KINDS)
def test_stream_start_resets(kind):
    model = make_model(kind=kind)
    model.eval()
    x = make_tokens()
    with torch.no_grad():
        fresh, _ = model(x[:, 5:])
        model(x[:, :5], stream_id="s", stream_start=True)
        restarted, _ = model(x[:, 5:], stream_id="s", stream_start=True)
        carried, _ = model(x[:, 5:], stream_id="s", stream_start=False)
    close(restarted, fresh)
    assert not torch.allclose(carried, fresh, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_stream_batch_size_change_starts_fresh(kind):
    model = make_model(kind=kind)
    model.eval()
    x = make_tokens()
    with torch.no_grad():
        model(x[:, :5], stream_id="s", stream_start=True)
        smaller, _ = model(x[:2, 5:], stream_id="s", stream_start=False)
        fresh, _ = model(x[:2, 5:])
    close(smaller, fresh)


@pytest.mark.parametrize("kind", KINDS)
def test_stream_state_is_detached(kind):
    model = make_model(kind=kind)
    model.train()
    x = make_tokens()
    logits, _ = model(x[:, :5], stream_id="s", stream_start=True)
    logits.sum().backward()  # frees the first window's graph
    for h, c in model.decoder._streams["s"]:
        assert h.grad_fn is None and c.grad_fn is None
        assert not h.requires_grad and not c.requires_grad
    model.zero_grad()
    logits, _ = model(x[:, 5:], stream_id="s", stream_start=False)
    # would raise "backward through the graph a second time" if the state were attached
    logits.sum().backward()


# ---------------------------------------------------------------- criterion


def make_sample(x, y):
    return {
        "id": torch.arange(x.size(0)),
        "net_input": {"src_tokens": x, "src_lengths": torch.full((x.size(0),), x.size(1))},
        "target": y,
        "ntokens": y.numel(),
        "nsentences": x.size(0),
    }


def recording(model):
    """Make ``model`` remember the output of its last forward call."""
    captured = {}
    forward = model.forward

    def wrapped(*args, **kwargs):
        captured["out"] = forward(*args, **kwargs)
        return captured["out"]

    model.forward = wrapped
    return captured


def hand_nll(logits, target):
    lprobs = torch.log_softmax(logits.double(), dim=-1)
    total = 0.0
    for b in range(target.size(0)):
        for t in range(target.size(1)):
            total -= float(lprobs[b, t, target[b, t]])
    return total


def test_criterion_train_loss_is_nll_plus_regularizers():
    alpha, beta = 2.0, 1.5
    model = make_model()
    model.train()
    crit = AWDCrossEntropyCriterion(make_task(), alpha, beta)
    captured = recording(model)
    x, y = make_tokens(1), make_tokens(2)
    torch.manual_seed(5)
    loss, sample_size, log = crit(model, make_sample(x, y))
    logits, extra = captured["out"]
    nll = hand_nll(logits.detach(), y)
    dropped = extra["dropped_output"].detach().double()
    raw = extra["raw_output"].detach().double()
    assert not torch.allclose(dropped, raw)
    ar = alpha * dropped.pow(2).mean().item()
    tar = beta * (raw[1:] - raw[:-1]).pow(2).mean().item()
    ntokens = B * T
    assert ar > 0 and tar > 0
    assert sample_size == ntokens
    assert float(loss.detach()) == pytest.approx(nll + ntokens * (ar + tar), rel=1e-5)
    assert float(log["loss"]) == pytest.approx(float(loss.detach()), rel=1e-6)
    assert float(log["nll_loss"]) == pytest.approx(nll, rel=1e-5)
    assert float(log["ar"]) == pytest.approx(ntokens * ar, rel=1e-5)
    assert float(log["tar"]) == pytest.approx(ntokens * tar, rel=1e-5)
    assert log["ntokens"] == ntokens and log["nsentences"] == B
    loss.backward()
    assert model.decoder.encoder.embed_tokens.weight.grad is not None


def test_criterion_ignores_padding():
    model = make_model()
    model.eval()
    crit = AWDCrossEntropyCriterion(make_task(), 2.0, 1.0)
    captured = recording(model)
    x, y = make_tokens(1), make_tokens(2)
    y[0, -3:] = DICT.pad()
    sample = make_sample(x, y)
    sample["ntokens"] = int(y.ne(DICT.pad()).sum())
    with torch.no_grad():
        loss, _, log = crit(model, sample)
    logits, _ = captured["out"]
    keep = y.ne(DICT.pad())
    expected = -torch.log_softmax(logits.double(), -1).gather(-1, y.unsqueeze(-1))[..., 0]
    assert float(loss) == pytest.approx(float(expected[keep].sum()), rel=1e-5)


def test_criterion_eval_loss_is_nll_only():
    model = make_model()
    model.eval()
    crit = AWDCrossEntropyCriterion(make_task(), 2.0, 1.0)
    captured = recording(model)
    x, y = make_tokens(1), make_tokens(2)
    with torch.no_grad():
        loss, sample_size, log = crit(model, make_sample(x, y))
    nll = hand_nll(captured["out"][0], y)
    assert float(loss) == pytest.approx(nll, rel=1e-5)
    assert float(log["loss"]) == pytest.approx(nll, rel=1e-5)
    assert float(log["nll_loss"]) == pytest.approx(nll, rel=1e-5)
    assert "ar" not in log and "tar" not in log


def test_reduce_metrics_base2_and_ppl():
    logs = [
        {"loss": torch.tensor(12.0), "nll_loss": torch.tensor(10.0), "ar": torch.tensor(1.2),
         "tar": torch.tensor(0.8), "ntokens": 6, "nsentences": 2, "sample_size": 6},
        {"loss": torch.tensor(7.0), "nll_loss": torch.tensor(6.0), "ar": torch.tensor(0.6),
         "tar": torch.tensor(0.4), "ntokens": 4, "nsentences": 2, "sample_size": 4},
    ]
    with metrics.aggregate(new_root=True) as agg:
        AWDCrossEntropyCriterion.reduce_metrics(logs)
        values = agg.get_smoothed_values()
    assert values["loss"] == pytest.approx(19.0 / 10 / math.log(2), abs=1e-3)
    assert values["nll_loss"] == pytest.approx(16.0 / 10 / math.log(2), abs=1e-3)
    assert values["ar"] == pytest.approx(0.18, abs=1e-4)
    assert values["tar"] == pytest.approx(0.12, abs=1e-4)
    assert values["ppl"] == pytest.approx(2 ** (16.0 / 10 / math.log(2)), abs=0.01)
    assert values["ppl"] == pytest.approx(math.exp(1.6), abs=0.01)  # ppl = e^(nats per token)
    assert AWDCrossEntropyCriterion.logging_outputs_can_be_summed()


def test_reduce_metrics_eval_logs_have_no_regularizers():
    logs = [{"loss": 5.0, "nll_loss": 5.0, "ntokens": 5, "nsentences": 1, "sample_size": 5}]
    with metrics.aggregate(new_root=True) as agg:
        AWDCrossEntropyCriterion.reduce_metrics(logs)
        values = agg.get_smoothed_values()
    assert values["nll_loss"] == pytest.approx(1 / math.log(2), abs=1e-3)
    assert values["ppl"] == pytest.approx(math.e, abs=0.01)
    assert "ar" not in values and "tar" not in values


# ---------------------------------------------------------------- dictionary fingerprint


@pytest.mark.parametrize("layout", ["current", "legacy"])
@pytest.mark.parametrize("kind", KINDS)
def test_dictionary_fingerprint_mismatch_raises(kind, layout):
    trained = make_model(seed=0, kind=kind)
    keys = (lambda state: state) if layout == "current" else legacy_layout
    same = make_model(seed=1, kind=kind)
    same.load_state_dict(keys(trained.state_dict()))  # same dictionary: fine
    close(same.decoder.encoder.embed_tokens.weight,
          trained.decoder.encoder.embed_tokens.weight, atol=0)
    swapped_dict = make_dictionary(swap=(3, 11))
    assert len(swapped_dict) == len(DICT)
    other = make_model(seed=1, dictionary=swapped_dict, kind=kind)
    with pytest.raises(FairseqAWDError) as err:
        other.load_state_dict(keys(trained.state_dict()))
    assert "--srcdict" in str(err.value)


def test_one_dictionary_check():
    """``check_dictionary``: the first ``trained_size`` symbols must be the trained ones,
    in order; symbols after them only if allowed."""
    trained = make_dictionary()
    size, fingerprint = len(trained), dictionary_fingerprint(trained)
    check_dictionary(make_dictionary(), size, fingerprint, "unused")
    longer = make_dictionary()
    longer.add_symbol("<mask>")
    check_dictionary(longer, size, fingerprint, "unused", extra_symbols={"<mask>"})
    for bad, extra in [(longer, ()), (make_dictionary(swap=(3, 11)), ("<mask>",))]:
        with pytest.raises(FairseqAWDError, match="^the error$"):
            check_dictionary(bad, size, fingerprint, "the error", extra_symbols=extra)
    shorter = Dictionary()
    with pytest.raises(FairseqAWDError):
        check_dictionary(shorter, size, fingerprint, "the error")


# ---------------------------------------------------------------- the encoder


@pytest.mark.parametrize("kind", KINDS)
def test_decoder_holds_the_encoder_under_its_output_head(kind):
    """The LM decoder holds an AWDEncoder (``encoder``) and one output head: a plain
    AWDEncoder loads the ``encoder.*`` entries (strictly) and computes the features."""
    model = make_model(kind=kind, untie_weights=True).eval()
    decoder = model.decoder
    assert type(decoder.encoder) is AWDEncoder and not isinstance(decoder, AWDEncoder)
    encoder = AWDEncoder(nn.Embedding(V, E, DICT.pad()),
                         [type(layer)(**layer_args(layer)) for layer in decoder.encoder.layers])
    own = decoder.state_dict()
    assert set(own) - {f"encoder.{k}" for k in encoder.state_dict()} == {
        "output_weight", "output_bias"}  # the full softmax head has no weights of its own
    encoder.load_state_dict({k: own[f"encoder.{k}"] for k in encoder.state_dict()},
                            strict=True)
    encoder.eval()
    tokens = make_tokens()
    features, raw, _ = decoder.extract_features(tokens)
    expected, expected_raw, _ = encoder(tokens)
    close(features, expected, atol=0)
    close(raw, expected_raw, atol=0)
    assert {n for n, _ in model.named_parameters()} <= set(model.state_dict())


LEGACY_NAMES = {new: old for old, new in LEGACY_DECODER_ENTRIES.items()}


def legacy_layout(state_dict):
    """``state_dict`` under the keys of the time the decoder was the encoder."""
    renamed = {}
    for key, value in state_dict.items():
        for new, old in LEGACY_NAMES.items():
            if key.startswith(f"decoder.{new}."):
                key = f"decoder.{old}.{key[len(f'decoder.{new}.'):]}"
            elif key == f"decoder.{new}":
                key = f"decoder.{old}"
        renamed[key] = value
    return renamed


@pytest.mark.parametrize("kind,options", [
    ("lstm", {}), ("lstm", {"adaptive_softmax_cutoff": "8,15"}),
    ("lstm", {"mos_components": 2, "untie_weights": True}), ("qrnn", {"untie_weights": True})])
def test_a_state_dict_of_the_earlier_layout_loads_strictly(kind, options):
    trained = make_model(seed=0, kind=kind, **options).eval()
    old = legacy_layout(trained.state_dict())
    assert "decoder.embed_tokens.weight" in old and not any(".encoder." in k for k in old)
    model = make_model(seed=1, kind=kind, **options).eval()
    model.load_state_dict(old, strict=True)
    for key, value in trained.state_dict().items():
        close(model.state_dict()[key], value, atol=0)
    tokens = make_tokens()
    close(model(tokens)[0], trained(tokens)[0], atol=0)


def layer_args(layer):
    """The constructor arguments of an LSTM or QRNN layer like ``layer``."""
    if hasattr(layer, "lstm"):
        return dict(input_size=layer.lstm.input_size, hidden_size=layer.hidden_size,
                    weight_dropout=layer.weight_dropout)
    return dict(input_size=layer.input_size, hidden_size=layer.hidden_size,
                window=layer.window, pooling=layer.pooling)
