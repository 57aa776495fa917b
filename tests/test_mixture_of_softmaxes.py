"""The mixture of softmaxes (fairseq_awd.modules.MixtureOfSoftmaxes, --mos-components)."""

import pytest
import torch
import torch.nn.functional as F
from fairseq.sequence_generator import SequenceGenerator
from test_model_and_criterion import DICT, KINDS, V, make_model, make_task, make_tokens

from fairseq_awd.criterions.awd_cross_entropy import AWDCrossEntropyCriterion
from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.modules import MixtureOfSoftmaxes

K, C, D = 3, 7, 5


def make_mos(seed=0, components=K, dropout=0.0):
    torch.manual_seed(seed)
    mos = MixtureOfSoftmaxes(C, D, components, dropout).double()
    weight = torch.randn(V, D, dtype=torch.float64)
    bias = torch.randn(V, dtype=torch.float64)
    return mos, weight, bias


def loop_log_prob(mos, hidden, weight, bias):
    """Eq. 4 of Yang et al. 2017 one position and one component at a time, in float64."""
    out = torch.empty(*hidden.shape[:-1], V, dtype=torch.float64)
    for t in range(hidden.size(0)):
        for b in range(hidden.size(1)):
            g = hidden[t, b]
            prior = torch.softmax(mos.prior.weight @ g, dim=0)
            p = torch.zeros(V, dtype=torch.float64)
            for k in range(mos.components):
                rows = slice(k * D, (k + 1) * D)
                h_k = torch.tanh(mos.latent.weight[rows] @ g + mos.latent.bias[rows])
                p += prior[k] * torch.softmax(weight @ h_k + bias, dim=0)
            out[t, b] = p.log()
    return out


def test_log_prob_matches_the_mixture_written_out_and_sums_to_one():
    mos, weight, bias = make_mos()
    hidden = torch.randn(4, 2, C, dtype=torch.float64)
    with torch.no_grad():
        lprobs = mos.log_prob(mos.contexts(hidden), weight, bias)
        expected = loop_log_prob(mos, hidden, weight, bias)
    torch.testing.assert_close(lprobs, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(lprobs.exp().sum(-1), torch.ones(4, 2, dtype=torch.float64))


def test_nll_is_the_target_log_prob_and_respects_ignore_index():
    mos, weight, bias = make_mos()
    hidden = torch.randn(4, 2, C, dtype=torch.float64)
    target = torch.randint(0, V, (4, 2))
    target[1, 0] = DICT.pad()
    packed = mos.contexts(hidden)
    nll = mos(packed, target, weight, bias, ignore_index=DICT.pad())
    lprobs = mos.log_prob(packed, weight, bias)
    expected = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    expected[1, 0] = 0.0
    torch.testing.assert_close(nll, expected, rtol=0, atol=1e-12)
    nll.sum().backward()  # gradients flow to the word vectors' caller-owned tensors too
    assert mos.latent.weight.grad is not None and mos.prior.weight.grad is not None


def test_one_component_is_a_softmax_over_the_projected_context():
    mos, weight, bias = make_mos(components=1)
    hidden = torch.randn(4, 2, C, dtype=torch.float64)
    with torch.no_grad():
        context = torch.tanh(mos.latent(hidden))
        expected = F.log_softmax(context @ weight.t() + bias, dim=-1)
        torch.testing.assert_close(mos.log_prob(mos.contexts(hidden), weight, bias), expected,
                                   rtol=0, atol=1e-12)


def test_context_dropout_is_locked_over_time():
    mos, _, _ = make_mos(dropout=0.5)
    mos.train()
    hidden = torch.randn(1, 3, C, dtype=torch.float64).expand(6, 3, C)
    latent = mos.contexts(hidden)[..., : K * D]
    assert torch.equal(latent[0].eq(0), latent[5].eq(0)) and bool(latent.eq(0).any())


@pytest.mark.parametrize("kind", KINDS)
def test_model_loss_equals_the_nll_of_its_normalized_probs(kind):
    model = make_model(kind=kind, mos_components=K, decoder_out_embed_dim=11, dropoutl=0.2)
    model.eval()
    tokens = make_tokens()
    net_output = model(tokens[:, :-1])
    target = tokens[:, 1:]
    lprobs = model.get_normalized_probs(net_output, log_probs=True)
    torch.testing.assert_close(lprobs.exp().sum(-1), torch.ones(target.shape))
    criterion = AWDCrossEntropyCriterion(make_task(), 0.0, 0.0)
    sample = {"net_input": {"src_tokens": tokens[:, :-1]}, "target": target,
              "ntokens": target.numel(), "nsentences": target.size(0)}
    loss, _, _ = criterion(model, sample)
    expected = -lprobs.gather(-1, target.unsqueeze(-1)).sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)


def test_incremental_decoding_and_temperature_equal_the_full_forward():
    model = make_model(mos_components=K, decoder_out_embed_dim=11)
    model.eval()
    tokens = make_tokens()[:2, :6]
    with torch.no_grad():
        full = model.get_normalized_probs(model(tokens), log_probs=True)
        state, steps = {}, []
        for t in range(tokens.size(1)):
            out = model.decoder(tokens[:, : t + 1], incremental_state=state)
            steps.append(model.get_normalized_probs(out, log_probs=True))
        torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)
        hot = model(tokens)
        hot[0].div_(2.0)  # what fairseq's generator does for --temperature 2
        expected = torch.log_softmax(full / 2.0, dim=-1)
        torch.testing.assert_close(model.get_normalized_probs(hot, log_probs=True), expected,
                                   rtol=0, atol=1e-5)
        generator = SequenceGenerator([model], make_task().target_dictionary, beam_size=2,
                                      max_len_b=4)
        sample = {"net_input": {"src_tokens": tokens[:, :1], "src_lengths": torch.ones(2)}}
        hypos = generator.forward(sample, prefix_tokens=tokens[:, 1:2])
        assert len(hypos) == 2 and all(len(h) == 2 for h in hypos)


def test_tied_mos_allows_a_last_layer_of_any_size_and_bad_options_are_refused():
    model = make_model(mos_components=K, decoder_out_embed_dim=11)
    assert model.decoder.output_weight is None  # tied to the embedding
    assert model.decoder.head.mixture.latent.weight.shape == (K * 8, 11)
    with pytest.raises(FairseqAWDError, match="--mos-components must be 0"):
        make_model(mos_components=-1)
    with pytest.raises(FairseqAWDError, match="do not go together"):
        make_model(mos_components=2, adaptive_softmax_cutoff="10")
    with pytest.raises(FairseqAWDError, match="--dropoutl"):
        make_model(mos_components=2, dropoutl=1.5)
