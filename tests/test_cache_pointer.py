"""The continuous cache pointer (fairseq_awd.modules.cache_pointer) against a per-token loop
of the reference pointer.py's formula."""

import pytest
import torch

from fairseq_awd.modules.cache_pointer import ContinuousCache, mix_with_cache

V, C = 13, 6


def reference_log_probs(hidden, tokens, vocab_lprobs, window, theta, lambdah):
    """pointer.py's loop, per stream and token, in float64: for position g >= window,
    p = (1 - λ) p_vocab + λ Σ_{i in [g - window, g)} softmax_i(θ h_g · h_i) [x_{i+1} = w]."""
    batch, length, _ = hidden.shape
    out = vocab_lprobs.double().clone()
    for b in range(batch):
        for g in range(window, length):
            keys = hidden[b, g - window:g].double()
            words = tokens[b, g - window + 1:g + 1]
            attention = torch.softmax(theta * keys @ hidden[b, g].double(), dim=0)
            p_ptr = torch.zeros(V, dtype=torch.float64).index_add_(0, words, attention)
            p = (1 - lambdah) * vocab_lprobs[b, g].double().exp() + lambdah * p_ptr
            out[b, g] = p.log()
    return out


def stream(batch=2, length=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, C, generator=g)
    # A small vocabulary, so that cached words repeat and the duplicates are summed.
    tokens = torch.randint(0, V, (batch, length), generator=g)
    lprobs = torch.log_softmax(torch.randn(batch, length, V, generator=g), dim=-1)
    return hidden, tokens, lprobs


def cached_log_probs(hidden, tokens, lprobs, window, theta, lambdah, cuts):
    """The module over consecutive windows of the stream cut at ``cuts``."""
    cache = ContinuousCache(window, theta)
    bounds = [0, *cuts, hidden.size(1)]
    pieces = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        attention = cache(hidden[:, start:end], tokens[:, start:end])
        pieces.append(mix_with_cache(lprobs[:, start:end], attention, lambdah))
    return torch.cat(pieces, dim=1)


@pytest.mark.parametrize("window,cuts", [(5, [3, 11, 12, 25]), (8, [20]), (1, [1, 2, 9])])
def test_matches_a_per_token_loop_across_windows_and_streams(window, cuts):
    hidden, tokens, lprobs = stream()
    theta, lambdah = 0.7, 0.3
    expected = reference_log_probs(hidden, tokens, lprobs, window, theta, lambdah)
    got = cached_log_probs(hidden, tokens, lprobs, window, theta, lambdah, cuts)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5)
    # Positions without a full window keep the vocabulary distribution exactly.
    assert torch.equal(got[:, :window], lprobs[:, :window])
    # The result does not depend on where the BPTT windows are cut.
    whole = cached_log_probs(hidden, tokens, lprobs, window, theta, lambdah, [])
    torch.testing.assert_close(got, whole, rtol=0, atol=1e-6)


def test_streams_are_independent():
    hidden, tokens, lprobs = stream(batch=3)
    both = cached_log_probs(hidden, tokens, lprobs, 6, 1.0, 0.2, [10, 30])
    for b in range(3):
        alone = cached_log_probs(hidden[b:b + 1], tokens[b:b + 1], lprobs[b:b + 1], 6, 1.0,
                                 0.2, [17])
        torch.testing.assert_close(both[b:b + 1], alone, rtol=0, atol=1e-6)


def test_lambda_zero_is_the_vocabulary_distribution_exactly():
    hidden, tokens, lprobs = stream()
    got = cached_log_probs(hidden, tokens, lprobs, 4, 1.0, 0.0, [7, 19])
    assert torch.equal(got, lprobs)


@pytest.mark.parametrize("lambdah", [0.1, 0.5, 1.0])
def test_probabilities_sum_to_one(lambdah):
    hidden, tokens, lprobs = stream()
    got = cached_log_probs(hidden, tokens, lprobs, 5, 2.0, lambdah, [13])
    torch.testing.assert_close(got.exp().sum(-1), torch.ones(got.shape[:2]), rtol=0, atol=1e-5)
    if lambdah == 1.0:  # the cache alone: only words seen in the window have mass
        seen = torch.zeros(V, dtype=torch.bool)
        seen[tokens[0, 10 - 5 + 1:11]] = True
        assert torch.isinf(got[0, 10, ~seen]).all() and torch.isfinite(got[0, 10, seen]).all()


def test_reset_starts_a_new_stream():
    hidden, tokens, lprobs = stream(batch=1)
    cache = ContinuousCache(3, 1.0)
    cache(hidden[:, :10], tokens[:, :10])
    cache.reset()
    attention = cache(hidden[:, 10:20], tokens[:, 10:20])
    assert attention.active.tolist() == [False] * 3 + [True] * 7
    fresh = ContinuousCache(3, 1.0)(hidden[:, 10:20], tokens[:, 10:20])
    assert torch.equal(attention.weights, fresh.weights)


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window must be positive"):
        ContinuousCache(0, 1.0)
