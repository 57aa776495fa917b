"""Tied adaptive softmax (TiedAdaptiveSoftmax, --adaptive-softmax-cutoff) for the AWD models."""

import argparse
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from fairseq.data import Dictionary
from fairseq.sequence_scorer import SequenceScorer
from fairseq_cli_helpers import (
    USER_DIR,
    assert_one_line_error,
    assert_samples_and_beam_search,
    binarize,
    eval_lm_perplexity,
    json_logs,
    real_text_lines,
    run,
    train,
)

from fairseq_awd.criterions.awd_cross_entropy import AWDCrossEntropyCriterion
from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.models.awd_lstm_lm import AWDLSTMConfig, AWDLSTMLanguageModel, awd_lstm_lm_wt103
from fairseq_awd.models.awd_qrnn_lm import AWDQRNNConfig, AWDQRNNLanguageModel, awd_qrnn_lm_wt103
from fairseq_awd.modules import TiedAdaptiveSoftmax
from fairseq_awd.modules import adaptive_softmax as adaptive_softmax_module
from fairseq_awd.modules.output_heads import AdaptiveSoftmaxHead, SoftmaxHead

E, HID, B, T = 8, 12, 3, 9
CUTOFF = "8,15,22"  # head [0, 8), tail clusters [8, 15), [15, 22), [22, 30)
MODELS = {"lstm": (AWDLSTMConfig, AWDLSTMLanguageModel),
          "qrnn": (AWDQRNNConfig, AWDQRNNLanguageModel)}


def make_dictionary(size: int = 30) -> Dictionary:
    d = Dictionary()
    for i in range(size - len(d)):
        d.add_symbol(f"w{i}")
    return d


DICT = make_dictionary()
V = len(DICT)


def make_task():
    return SimpleNamespace(target_dictionary=DICT, source_dictionary=DICT)


def make_model(kind="lstm", seed=0, **overrides):
    cfg = dict(decoder_embed_dim=E, decoder_hidden_size=HID, decoder_layers=2, dropout=0.3,
               dropouth=0.2, dropouti=0.3, dropoute=0.1, wdrop=0.4,
               adaptive_softmax_cutoff=CUTOFF)
    cfg.update(overrides)
    config_class, model_class = MODELS[kind]
    torch.manual_seed(seed)
    return model_class.build_model(config_class(**cfg), make_task())


def make_tokens(seed=1, low=DICT.nspecial, high=V, batch=B, steps=T):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (batch, steps), generator=g)


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def hand_log_probs(h, weight, bias, cluster_weight, cluster_bias, cutoffs):
    """The paper's equation word by word, in float64 Python loops."""
    bounds = [*cutoffs, weight.size(0)]
    out = torch.empty(h.size(0), weight.size(0), dtype=torch.float64)
    for n in range(h.size(0)):
        head = [float(h[n] @ weight[i] + bias[i]) for i in range(cutoffs[0])]
        head += [float(h[n] @ cluster_weight[k] + cluster_bias[k]) for k in range(len(cutoffs))]
        head_norm = math.log(sum(math.exp(z) for z in head))
        for i in range(cutoffs[0]):
            out[n, i] = head[i] - head_norm
        for k in range(len(cutoffs)):
            words = range(bounds[k], bounds[k + 1])
            z = {i: float(h[n] @ weight[i] + bias[i]) for i in words}
            norm = math.log(sum(math.exp(v) for v in z.values()))
            for i in words:
                out[n, i] = head[cutoffs[0] + k] - head_norm + z[i] - norm
    return out


# ---------------------------------------------------------------- the module


def test_module_log_probs_and_nll_match_the_equation():
    torch.manual_seed(0)
    vocab, dim, n, cutoffs = 12, 5, 7, [4, 7, 9]
    module = TiedAdaptiveSoftmax(vocab, dim, cutoffs).double()
    weight, bias = torch.randn(vocab, dim).double(), torch.randn(vocab).double()
    h = torch.randn(n, dim).double()
    expected = hand_log_probs(h, weight, bias, module.cluster_weight.detach(),
                              module.cluster_bias.detach(), cutoffs)
    lprobs = module.log_prob(h, weight, bias)
    close(lprobs, expected, atol=1e-12)
    close(lprobs.exp().sum(-1), torch.ones(n).double(), atol=1e-12)
    target = torch.tensor([0, 3, 4, 6, 7, 8, 11])  # every cluster, both ends of each
    close(module(h, target, weight, bias), -expected.gather(1, target[:, None])[:, 0], atol=1e-12)
    assert [p.shape for p in module.parameters()] == [(3, dim), (3,)]


def linear_calls(monkeypatch, module, *inputs):
    """``(module(*inputs), [(rows, out features) of each F.linear call it made])``."""
    calls = []
    linear = F.linear

    def recording_linear(x, w, b=None):
        calls.append((x.size(0), w.size(0)))
        return linear(x, w, b)

    monkeypatch.setattr(adaptive_softmax_module.F, "linear", recording_linear)
    out = module(*inputs)
    monkeypatch.undo()
    return out, calls


def test_module_computes_only_the_tail_clusters_that_hold_targets(monkeypatch):
    torch.manual_seed(0)
    module = TiedAdaptiveSoftmax(V, E, [8, 15, 22])
    weight, bias = torch.randn(V, E), torch.randn(V)
    h = torch.randn(2, 5, E)
    target = torch.tensor([[1, 16, 5, 21, 2], [17, 7, 7, 15, 3]])  # head and cluster [15, 22)
    nll, calls = linear_calls(monkeypatch, module, h, target, weight, bias)
    assert calls == [(10, 8 + 3), (4, 7)]  # head on all 10 rows, one tail on its 4 rows
    assert nll.shape == (2, 5)
    expected = -module.log_prob(h, weight, bias).gather(-1, target.unsqueeze(-1))[..., 0]
    close(nll, expected)


def test_module_ignore_index_and_empty_clusters():
    torch.manual_seed(0)
    module = TiedAdaptiveSoftmax(V, E, [8, 15, 22])
    weight, bias = torch.randn(V, E, requires_grad=True), torch.randn(V)
    h = torch.randn(4, E)
    target = torch.tensor([1, 9, 1, 25])
    nll = module(h, target, weight, bias, ignore_index=1)
    assert nll[0] == 0 and nll[2] == 0 and nll[1] > 0 and nll[3] > 0
    nll.sum().backward()
    assert weight.grad[15:22].abs().sum() == 0  # no target there: that cluster is not computed


def test_module_rejects_bad_cutoffs():
    for cutoffs in ([], [0, 5], [5, 5], [9, 4], [5, V]):
        with pytest.raises(ValueError):
            TiedAdaptiveSoftmax(V, E, cutoffs)


# ---------------------------------------------------------------- the decoder / model


@pytest.mark.parametrize("kind", ["lstm", "qrnn"])
def test_parameters_tied_untied_and_full(kind):
    tied = make_model(kind)
    untied = make_model(kind, untie_weights=True)
    full = make_model(kind, adaptive_softmax_cutoff=None)
    k = 3  # tail clusters
    assert isinstance(full.decoder.head, SoftmaxHead)
    assert isinstance(tied.decoder.head, AdaptiveSoftmaxHead)
    # tying saves one whole (V, E) matrix; the only extra parameters are the cluster vectors
    assert n_params(untied) - n_params(tied) == V * E
    assert n_params(tied) - n_params(full) == k * (E + 1)
    dec = tied.decoder
    assert dec.word_vectors is dec.encoder.embed_tokens.weight and dec.output_weight is None
    assert sum(p is dec.encoder.embed_tokens.weight for p in tied.parameters()) == 1
    new_keys = set(tied.state_dict()) - set(full.state_dict())
    assert new_keys == {"decoder.head.softmax.cluster_weight",
                        "decoder.head.softmax.cluster_bias"}


@pytest.mark.parametrize("kind", ["lstm", "qrnn"])
def test_probabilities_sum_to_one_and_nll_equals_full_softmax_nll(kind):
    model = make_model(kind)
    model.train()  # the dropouts are on; the adaptive softmax itself has no dropout here
    x, y = make_tokens(1), make_tokens(2)
    y[0, :4] = torch.tensor([9, 16, 25, 29])  # make sure every tail cluster has a target
    out, extra = model(x)
    assert out.shape == (B, T, E + 1)
    lprobs = model.get_normalized_probs((out, extra), log_probs=True)
    assert lprobs.shape == (B, T, V)
    close(lprobs.exp().sum(-1), torch.ones(B, T), atol=1e-5)
    close(model.get_normalized_probs((out, extra), log_probs=False), lprobs.exp())
    nll = model.decoder.output_nll((out, extra), y)
    close(nll, -lprobs.gather(-1, y.unsqueeze(-1))[..., 0])


def test_untied_adaptive_softmax_with_another_output_size():
    model = make_model(untie_weights=True, decoder_out_embed_dim=6)
    model.eval()
    dec = model.decoder
    assert dec.word_vectors is dec.output_weight and dec.output_weight.shape == (V, 6)
    assert dec.head.softmax.cluster_weight.shape == (3, 6)
    out, extra = model(make_tokens())
    lprobs = model.get_normalized_probs((out, extra), log_probs=True)
    close(lprobs.exp().sum(-1), torch.ones(B, T))


def test_criterion_uses_the_adaptive_nll(monkeypatch):
    alpha, beta = 2.0, 1.5
    model = make_model()
    model.train()
    crit = AWDCrossEntropyCriterion(make_task(), alpha, beta)
    captured = {}
    forward = model.forward

    def recording_forward(*args, **kwargs):
        captured["out"] = forward(*args, **kwargs)
        return captured["out"]

    def no_full_log_probs(*args, **kwargs):
        raise AssertionError("the criterion must not compute full-vocabulary log-probs")

    monkeypatch.setattr(model, "forward", recording_forward)
    monkeypatch.setattr(model.decoder.head.softmax, "log_prob", no_full_log_probs)
    x, y = make_tokens(1), make_tokens(2)
    sample = {"net_input": {"src_tokens": x, "src_lengths": torch.full((B,), T)}, "target": y,
              "ntokens": y.numel(), "nsentences": B}
    loss, sample_size, log = crit(model, sample)
    monkeypatch.undo()
    out, extra = captured["out"]
    with torch.no_grad():
        lprobs = model.get_normalized_probs((out, extra), log_probs=True)
    nll = float(-lprobs.gather(-1, y.unsqueeze(-1)).sum())
    dropped, raw = extra["dropped_output"].detach(), extra["raw_output"].detach()
    ar = alpha * float(dropped.pow(2).mean())
    tar = beta * float((raw[1:] - raw[:-1]).pow(2).mean())
    assert float(log["nll_loss"]) == pytest.approx(nll, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(nll + B * T * (ar + tar), rel=1e-5)
    assert sample_size == B * T


def test_gradient_reaches_the_shared_embedding_from_both_ends():
    model = make_model(dropoute=0.0)
    model.train()
    dec = model.decoder
    weight = dec.encoder.embed_tokens.weight
    x = make_tokens(1, low=4, high=8)                    # inputs: rows 4..7 only
    y = make_tokens(2, low=15, high=22)                  # targets: cluster [15, 22) only
    y[:, 0] = 5                                          # and one head word
    out, extra = model(x)
    features = extra["dropped_output"]  # (T, B, E): what the softmax sees
    nll = dec.output_nll((out, extra), y).sum()
    total, d_features = torch.autograd.grad(nll, [weight, features], retain_graph=True)
    # output end: the word vectors, with the features held fixed
    fixed = features.detach().transpose(0, 1)
    output_end, = torch.autograd.grad(
        dec.head.softmax(fixed, y, weight, dec.output_bias).sum(), weight)
    # input end: through the embedding lookup and the recurrent layers
    input_end, = torch.autograd.grad(features, weight, grad_outputs=d_features)
    close(total, output_end + input_end)
    used_as_input = input_end.abs().sum(1) > 0
    assert used_as_input.tolist() == [4 <= i < 8 for i in range(V)]
    used_as_output = output_end.abs().sum(1) > 0
    # every head word (the head softmax) and the words of the one cluster that has targets
    assert used_as_output.tolist() == [i < 8 or 15 <= i < 22 for i in range(V)]


def test_temperature_division_gives_exact_temperature():
    """fairseq's generator divides the decoder output by --temperature in place."""
    model = make_model()
    model.eval()
    with torch.no_grad():
        out, extra = model(make_tokens())
        lprobs = model.get_normalized_probs((out, extra), log_probs=True)
        hot = model.get_normalized_probs((out.clone().div_(0.7), extra), log_probs=True)
    close(hot, torch.log_softmax(lprobs / 0.7, dim=-1))


def test_incremental_decoding_matches_full_pass():
    model = make_model()
    model.eval()
    x = make_tokens()
    with torch.no_grad():
        full = model.get_normalized_probs(model(x), log_probs=True)
        inc = {}
        steps = [model.get_normalized_probs(model(x[:, : t + 1], incremental_state=inc),
                                            log_probs=True) for t in range(T)]
    close(torch.cat(steps, dim=1), full)


def test_sequence_scorer_scores_are_exact_with_and_without_softmax_batches():
    model = make_model()
    model.eval()
    x, y = make_tokens(1), make_tokens(2)
    y[0, -2:] = DICT.pad()
    sample = {"net_input": {"src_tokens": x, "src_lengths": torch.full((B,), T)}, "target": y}
    with torch.no_grad():
        expected = -model.decoder.output_nll(model(x), y, ignore_index=DICT.pad())
    for softmax_batch in (None, 5):
        hypos = SequenceScorer(DICT, softmax_batch=softmax_batch).generate([model], dict(sample))
        for b in range(B):
            n = int(y[b].ne(DICT.pad()).sum())
            close(hypos[b][0]["positional_scores"], expected[b, :n])


@pytest.mark.parametrize("cutoff,fragments", [
    ("20,10", ["strictly increasing", "20,10"]),
    ("8,8", ["strictly increasing"]),
    ("0,10", ["positive"]),
    ("8,30", ["not below the vocabulary size 30"]),
    ("8,100", ["not below the vocabulary size 30", "8,100"]),
    ("8,x", ["comma-separated integers expected, got '8,x'"]),
])
def test_bad_cutoffs_raise_one_clear_error(cutoff, fragments):
    with pytest.raises(FairseqAWDError) as err:
        make_model(adaptive_softmax_cutoff=cutoff)
    assert "--adaptive-softmax-cutoff" in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_empty_cutoff_is_the_full_softmax_and_bad_dropout_raises():
    assert isinstance(make_model(adaptive_softmax_cutoff="").decoder.head, SoftmaxHead)
    with pytest.raises(FairseqAWDError, match="--adaptive-softmax-dropout"):
        make_model(adaptive_softmax_dropout=1.0)


def test_wt103_architectures():
    lstm = argparse.Namespace()
    awd_lstm_lm_wt103(lstm)
    assert vars(lstm) == {
        "decoder_hidden_size": 2500, "decoder_layers": 4, "dropoute": 0.0, "dropouth": 0.1,
        "dropouti": 0.1, "dropout": 0.1, "wdrop": 0.0,
        "adaptive_softmax_cutoff": "2800,20000,76000",
    }
    qrnn = argparse.Namespace(adaptive_softmax_cutoff="100,200")  # the command line wins
    awd_qrnn_lm_wt103(qrnn)
    assert qrnn.adaptive_softmax_cutoff == "100,200" and qrnn.decoder_hidden_size == 2500
    qrnn = argparse.Namespace()
    awd_qrnn_lm_wt103(qrnn)
    assert qrnn.adaptive_softmax_cutoff == "2800,20000,76000"


# ---------------------------------------------------------------- fairseq's command-line tools


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("adaptive")
    data = binarize(root / "bin", {"train": real_text_lines("train", 200),
                                   "valid": real_text_lines("valid", 40)})
    vocab = sum(1 for _ in open(data / "dict.txt")) + 4
    assert vocab > 600
    cutoff = f"40,150,{vocab // 2}"
    save_dir = root / "ckpt"
    proc = train(data, save_dir, ["--adaptive-softmax-cutoff", cutoff, "--lr", "5",
                                  "--max-epoch", "1", "--no-epoch-checkpoints"])
    output = proc.stdout + proc.stderr
    assert f"'adaptive_softmax_cutoff': '{cutoff}'" in output
    assert "TiedAdaptiveSoftmax" in output
    return data, save_dir, json_logs(output, "valid"), vocab


@pytest.mark.e2e
def test_eval_lm_matches_logged_validation_perplexity(trained):
    data, save_dir, valid, vocab = trained
    ppls = [float(record["valid_ppl"]) for record in valid]
    assert len(ppls) == 1 and ppls[0] < vocab / 4
    proc = run("eval_lm", [str(data), "--user-dir", USER_DIR, "--task", "awd_language_modeling",
                           "--cpu", "--valid-batch-size", "4", "--softmax-batch", "7",
                           "--path", str(save_dir / "checkpoint_best.pt"),
                           "--gen-subset", "valid"])
    assert eval_lm_perplexity(proc.stdout + proc.stderr) == pytest.approx(min(ppls), rel=0.005)


@pytest.mark.e2e
def test_interactive_sampling_and_beam_search(trained):
    data, save_dir, _, _ = trained
    assert_samples_and_beam_search(data, save_dir / "checkpoint_best.pt",
                                   ["--temperature", "0.8"])


@pytest.mark.e2e
def test_bad_cutoff_on_the_command_line(trained, tmp_path):
    """The WikiText-103 architecture's cutoffs on a small vocabulary: one line, exit 1."""
    data, _, _, vocab = trained
    proc = train(data, tmp_path / "ckpt", ["--arch", "awd_lstm_lm_wt103"], check=False)
    assert_one_line_error(proc, "--adaptive-softmax-cutoff: cutoffs 2800,20000,76000 are not "
                          f"below the vocabulary size {vocab}")


def test_bf16_tail_rows_come_in_buckets_and_give_the_same_loss(monkeypatch):
    """On the CPU a half-precision tail cluster runs on a bucketed row count (oneDNN keeps
    kernels per shape: varying counts grew memory without end); the loss is unchanged."""
    torch.manual_seed(0)
    module = TiedAdaptiveSoftmax(V, E, [8, 15, 22]).bfloat16()
    weight, bias = torch.randn(V, E).bfloat16(), torch.randn(V).bfloat16()
    h = torch.randn(2, 5, E).bfloat16()
    target = torch.tensor([[1, 16, 5, 21, 2], [17, 7, 7, 15, 3]])
    nll, calls = linear_calls(monkeypatch, module, h, target, weight, bias)
    assert calls == [(10, 8 + 3), (adaptive_softmax_module.ROW_BUCKET, 7)]
    rows = torch.tensor([1, 3, 5, 8])  # the positions whose targets are in [15, 22)
    head = F.cross_entropy(F.linear(h.view(10, E), torch.cat([weight[:8], module.cluster_weight]),
                                  torch.cat([bias[:8], module.cluster_bias])).float(),
                           torch.tensor([1, 9, 5, 9, 2, 9, 7, 7, 9, 3]), reduction="none")
    tail = F.cross_entropy(F.linear(h.view(10, E)[rows], weight[15:22], bias[15:22]).float(),
                           target.view(-1)[rows] - 15, reduction="none")
    assert torch.equal(nll.view(-1), head.index_add(0, rows, tail))
