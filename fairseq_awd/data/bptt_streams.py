"""Contiguous token streams and (variable-length) BPTT windows over them.

The AWD-LSTM recipe (Merity et al. 2017, section 4.1) reads a corpus as ``B``
parallel streams and cuts them into windows; the training window length is drawn
anew for every step so that every token sees gradients from many offsets.
"""

from typing import List, Optional, Tuple

import numpy as np
import torch
from fairseq.data import FairseqDataset
from fairseq.distributed import utils as dist_utils

from fairseq_awd.errors import FairseqAWDError

Window = Tuple[int, int]


def data_parallel_position() -> Tuple[int, int]:
    """``(rank, world size)`` of this data-parallel worker; ``(0, 1)`` without
    torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return dist_utils.get_data_parallel_rank(), dist_utils.get_data_parallel_world_size()
    return 0, 1


def stream_layout(
    tokens: torch.Tensor, batch_size: int, num_shards: int = 1, shard_id: int = 0
) -> torch.Tensor:
    """Lay a 1-D token sequence out as ``num_shards * batch_size`` contiguous streams.

    The corpus is cut into ``num_shards * batch_size`` equal contiguous pieces (the
    tail that does not divide is dropped); shard ``k`` gets pieces ``k*B .. k*B+B-1``,
    so each worker reads its own contiguous part, and ``num_shards`` workers with
    batch size ``B`` see exactly the streams of one worker with ``num_shards * B``.

    Returns:
        ``(L, batch_size)`` tensor, time-major: column ``j`` is stream ``j``.
    """
    total = num_shards * batch_size
    length = tokens.numel() // total
    grid = tokens[: length * total].view(total, length)
    return grid[shard_id * batch_size : (shard_id + 1) * batch_size].t().contiguous()


def bptt_windows(
    stream_length: int,
    bptt: int,
    rng: Optional[np.random.RandomState] = None,
    short_prob: float = 0.05,
    std: float = 5.0,
    min_len: int = 5,
) -> List[Window]:
    """Cut streams of ``stream_length`` tokens into ``(start, length)`` windows.

    Each window's inputs are ``stream[start : start + length]`` and its targets the
    same span shifted by one, so the last token of the stream is only a target.
    Without ``rng`` every window is ``bptt`` long (evaluation). With ``rng``
    (training), each length is drawn as in the reference: base ``bptt`` with
    probability ``1 - short_prob`` else ``bptt / 2``, then ``max(min_len,
    int(N(base, std)))``, clipped to the tokens left.
    """
    windows: List[Window] = []
    start = 0
    if rng is None:
        while start < stream_length - 1:
            length = min(bptt, stream_length - 1 - start)
            windows.append((start, length))
            start += length
        return windows
    while start < stream_length - 2:
        base = bptt if rng.random_sample() < 1 - short_prob else bptt / 2.0
        length = max(min_len, int(rng.normal(base, std)))
        length = min(length, stream_length - 1 - start)
        windows.append((start, length))
        start += length
    return windows


class BPTTStreams(FairseqDataset):
    """One split as ``(L, B)`` streams; item ``(start, length)`` is one BPTT window.

    Items are ``(inputs, targets, start, split)`` with ``inputs``/``targets`` of shape
    ``(B, length)`` (batch-major, as fairseq expects).
    """

    def __init__(self, split: str, tokens: torch.Tensor, batch_size: int, min_length: int,
                 num_shards: int = 1, shard_id: int = 0):
        super().__init__()
        self.split = split
        needed = num_shards * batch_size * min_length
        if tokens.numel() < needed:
            workers = f" x {num_shards} workers" if num_shards > 1 else ""
            raise FairseqAWDError(
                f"split '{split}' has {tokens.numel()} tokens, too few for {batch_size} streams"
                f"{workers} of at least {min_length} tokens ({needed} needed); use a smaller "
                "batch size (--batch-size, --valid-batch-size, --test-batch-size) or --bptt, "
                "or more data"
            )
        self.streams = stream_layout(tokens, batch_size, num_shards, shard_id)

    @property
    def stream_length(self) -> int:
        return self.streams.size(0)

    @property
    def batch_size(self) -> int:
        return self.streams.size(1)

    def __len__(self) -> int:
        return self.stream_length - 1

    def __getitem__(self, window: Window):
        start, length = window
        # contiguous: fairseq's cross_entropy flattens the targets with view()
        inputs = self.streams[start : start + length].t().contiguous()
        targets = self.streams[start + 1 : start + 1 + length].t().contiguous()
        return inputs, targets, start, self.split
