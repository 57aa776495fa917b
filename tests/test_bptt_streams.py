"""Tests of the stream layout and BPTT windows (fairseq_awd.data.bptt_streams)."""

import numpy as np
import pytest
import torch

from fairseq_awd.data.bptt_streams import BPTTStreams, bptt_windows, stream_layout
from fairseq_awd.errors import FairseqAWDError


def reference_batchify(data: torch.Tensor, bsz: int) -> torch.Tensor:
    """The AWD-LSTM reference ``batchify``: drop the tail, ``view(bsz, -1).t()``."""
    nbatch = data.size(0) // bsz
    return data.narrow(0, 0, nbatch * bsz).view(bsz, -1).t().contiguous()


def reference_windows(stream_length: int, bptt: int, seed: int):
    """The reference training loop's window lengths (Merity et al. 2017, section 4.1)."""
    rng = np.random.RandomState(seed)
    windows, i = [], 0
    while i < stream_length - 2:
        base = bptt if rng.random() < 0.95 else bptt / 2.0
        seq_len = max(5, int(rng.normal(base, 5)))
        seq_len = min(seq_len, stream_length - 1 - i)
        windows.append((i, seq_len))
        i += seq_len
    return windows


# ---------------------------------------------------------------- stream_layout


@pytest.mark.parametrize("n,bsz", [(23, 4), (20, 4), (103, 3), (7, 7)])
def test_stream_layout_columns_are_contiguous_ranges(n, bsz):
    tokens = torch.arange(n)
    streams = stream_layout(tokens, bsz)
    length = n // bsz
    assert streams.shape == (length, bsz)
    for j in range(bsz):
        assert torch.equal(streams[:, j], torch.arange(j * length, (j + 1) * length))
    assert torch.equal(streams, reference_batchify(tokens, bsz))
    # the tail is dropped
    assert int(streams.max()) == length * bsz - 1


@pytest.mark.parametrize("n,bsz,shards", [(103, 3, 2), (100, 5, 2), (131, 2, 4)])
def test_stream_layout_shards_concatenate_to_one_big_batch(n, bsz, shards):
    tokens = torch.arange(n) * 3 + 1
    parts = [stream_layout(tokens, bsz, shards, k) for k in range(shards)]
    for part in parts:
        assert part.shape == (n // (shards * bsz), bsz)
    assert torch.equal(torch.cat(parts, dim=1), stream_layout(tokens, shards * bsz))
    assert torch.equal(torch.cat(parts, dim=1), reference_batchify(tokens, shards * bsz))


# ---------------------------------------------------------------- bptt_windows


@pytest.mark.parametrize(
    "length,bptt,expected",
    [
        (23, 5, [(0, 5), (5, 5), (10, 5), (15, 5), (20, 2)]),
        (21, 5, [(0, 5), (5, 5), (10, 5), (15, 5)]),
        (4, 10, [(0, 3)]),
        (2, 10, [(0, 1)]),
        (1, 10, []),
    ],
)
def test_fixed_windows_explicit(length, bptt, expected):
    assert bptt_windows(length, bptt) == expected


@pytest.mark.parametrize("length,bptt", [(23, 5), (100, 7), (71, 70), (500, 35)])
def test_fixed_windows_tile_stream(length, bptt):
    windows = bptt_windows(length, bptt)
    assert windows[0][0] == 0
    for (s0, l0), (s1, _) in zip(windows, windows[1:]):
        assert s1 == s0 + l0
    assert all(n == bptt for _, n in windows[:-1])
    assert 1 <= windows[-1][1] <= bptt
    start, n = windows[-1]
    assert start + n == length - 1  # targets reach the last token, never beyond


def test_random_windows_structure():
    length, bptt = 3000, 40
    windows = bptt_windows(length, bptt, np.random.RandomState(3))
    assert windows[0][0] == 0
    for (s0, l0), (s1, _) in zip(windows, windows[1:]):
        assert s1 == s0 + l0  # contiguous, non-overlapping
    assert all(n >= 5 for _, n in windows[:-1])
    assert len({n for _, n in windows}) > 5  # lengths really vary
    start, n = windows[-1]
    assert n >= 1
    assert start + n <= length - 1
    assert start + n >= length - 2  # loop runs while start < L - 2


@pytest.mark.parametrize("length,bptt,seed", [(3000, 40, 0), (1000, 70, 1), (200, 20, 5)])
def test_random_windows_match_reference_algorithm(length, bptt, seed):
    windows = bptt_windows(length, bptt, np.random.RandomState(seed))
    assert windows == reference_windows(length, bptt, seed)


def test_random_windows_min_len_and_clip():
    # tiny bptt: most draws fall below min_len and are raised to it
    windows = bptt_windows(200, 3, np.random.RandomState(0), min_len=6)
    assert all(n >= 6 for _, n in windows[:-1])
    assert windows[-1][0] + windows[-1][1] <= 199


def test_random_windows_mean_length():
    bptt = 70
    windows = bptt_windows(200_000, bptt, np.random.RandomState(0))
    lengths = np.array([n for _, n in windows[:-1]])
    # 0.95 * bptt + 0.05 * bptt / 2, less about 0.5 for int() truncation
    assert abs(lengths.mean() - 0.975 * bptt) < 1.5
    short = (lengths < 0.75 * bptt).mean()
    assert 0.03 < short < 0.07


def test_random_windows_seeded():
    a = bptt_windows(5000, 50, np.random.RandomState(11))
    b = bptt_windows(5000, 50, np.random.RandomState(11))
    c = bptt_windows(5000, 50, np.random.RandomState(12))
    assert a == b
    assert a != c


# ---------------------------------------------------------------- BPTTStreams


def test_bptt_streams_item_inputs_and_shifted_targets():
    ds = BPTTStreams("train", torch.arange(103), batch_size=4, min_length=5)
    assert ds.stream_length == 25
    assert ds.batch_size == 4
    assert len(ds) == 24
    inputs, targets, start, split = ds[(3, 6)]
    assert inputs.shape == (4, 6) and targets.shape == (4, 6)
    for j in range(4):
        assert torch.equal(inputs[j], torch.arange(j * 25 + 3, j * 25 + 9))
        assert torch.equal(targets[j], torch.arange(j * 25 + 4, j * 25 + 10))
    assert start == 3 and split == "train"
    # the last window: targets end at the stream's last token
    inputs, targets, _, _ = ds[(20, 4)]
    assert torch.equal(targets[:, -1], torch.tensor([24, 49, 74, 99]))
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_bptt_streams_windows_cover_every_target_once():
    ds = BPTTStreams("valid", torch.arange(103), batch_size=4, min_length=5)
    seen = torch.cat([ds[w][1] for w in bptt_windows(ds.stream_length, 7)], dim=1)
    assert torch.equal(seen, ds.streams[1:].t())


def test_bptt_streams_shard():
    tokens = torch.arange(100)
    ds = BPTTStreams("train", tokens, batch_size=2, min_length=5, num_shards=2, shard_id=1)
    assert torch.equal(ds.streams, stream_layout(tokens, 2, 2, 1))
    assert torch.equal(ds.streams[:, 0], torch.arange(50, 75))


def test_bptt_streams_too_small_raises():
    with pytest.raises(FairseqAWDError) as err:
        BPTTStreams("valid", torch.arange(39), batch_size=4, min_length=10)
    msg = str(err.value)
    assert "'valid'" in msg
    assert "--batch-size" in msg and "--valid-batch-size" in msg and "--bptt" in msg
    assert "39" in msg and "40" in msg
    assert isinstance(err.value, ValueError)  # FairseqAWDError is a ValueError


def test_bptt_streams_too_small_with_shards_raises():
    with pytest.raises(FairseqAWDError) as err:
        BPTTStreams("train", torch.arange(79), batch_size=4, min_length=10, num_shards=2)
    msg = str(err.value)
    assert "'train'" in msg and "2 workers" in msg and "80" in msg


def test_bptt_streams_exactly_enough():
    ds = BPTTStreams("test", torch.arange(40), batch_size=4, min_length=10)
    assert ds.streams.shape == (10, 4)
