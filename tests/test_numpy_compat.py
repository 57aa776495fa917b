"""fairseq 0.12's ``np.compat.long`` and ``np.percentile(interpolation=)`` call sites run
on numpy 1 and numpy 2, and numpy itself is left as it is."""

import numpy as np
import torch
from fairseq.data import Dictionary, LanguagePairDataset, TokenBlockDataset, language_pair_dataset

import fairseq_awd  # noqa: F401  (what fairseq's --user-dir import does)


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items
        self.sizes = np.array([len(t) for t in items])

    def __getitem__(self, i):
        return self.items[i]

    def __len__(self):
        return len(self.items)


def sentences(lengths, eos=2):
    return ListDataset([torch.tensor([5] * (n - 1) + [eos]) for n in lengths])


def test_token_blocks_in_eos_mode_are_the_sentences():
    data = sentences([3, 1, 4])
    blocks = TokenBlockDataset(data, data.sizes, block_size=None, pad=1, eos=2,
                               break_mode="eos")
    assert blocks.block_to_dataset_index.tolist() == [[0, 0, 0], [1, 0, 1], [2, 0, 2]]
    assert [blocks[i].tolist() for i in range(3)] == [[5, 5, 2], [2], [5, 5, 5, 2]]


def test_language_pairs_are_bucketed_by_padded_length():
    vocab = Dictionary()
    src, tgt = sentences([2, 3, 7, 8]), sentences([3, 3, 4, 9])
    pairs = LanguagePairDataset(src, src.sizes, vocab, tgt, tgt.sizes, vocab, num_buckets=2)
    assert pairs.bucketed_num_tokens.dtype == np.int64
    # two buckets per side: every length is padded up to its bucket's bound
    assert len(set(pairs.bucketed_num_tokens.tolist())) <= 2
    assert all(b >= max(s, t) for b, s, t in
               zip(pairs.bucketed_num_tokens, src.sizes, tgt.sizes))


def test_numpy_itself_is_left_alone():
    assert hasattr(np, "compat") == np.__version__.startswith("1.")
    if not hasattr(np, "compat"):  # numpy 2: only fairseq's two modules see the name
        language_pair_np = language_pair_dataset.np
        assert language_pair_np.compat.long is np.int64
        assert language_pair_np.arange is np.arange
        sizes = np.array([1, 2, 3, 10])
        assert language_pair_np.percentile(sizes, [0, 50], interpolation="lower").tolist() == [
            1, 2]
