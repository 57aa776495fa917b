"""Whether a binarized split (``PREFIX.bin`` with its ``PREFIX.idx``, as fairseq-preprocess
writes them) can be scored with a dictionary, checked before any token of it is read.

Two faults would otherwise give a number without a word: a ``.bin`` cut short with its
``.idx`` intact (the language-modeling task reads the raw buffer, so it scored the tokens
that remain), and a ``.bin`` binarized with another dictionary than the ``dict.txt`` beside
it (ids beyond that dictionary index past the embedding, or score the wrong words). Ids
that are below the dictionary's size but were written with another dictionary cannot be
told from the ids alone; ``check_dictionary`` catches a checkpoint of another dictionary.
"""

import os
import struct

import numpy as np
from fairseq.data import Dictionary
from fairseq.data.indexed_dataset import MMapIndexedDataset, data_file_path, index_file_path

from fairseq_awd.errors import FairseqAWDError


def check_binarized(prefix: str, dictionary: Dictionary, dictionary_path: str,
                    preprocess_fix: str) -> None:
    """Raise FairseqAWDError unless ``prefix``'s ``.bin`` holds exactly the tokens its
    ``.idx`` records and every token id is below ``len(dictionary)``.

    Only fairseq's default ``mmap`` format is checked (other formats, or a missing file,
    pass: the caller's loader reports those). The size check reads the index; the id check
    reads the data once as a memory map. ``dictionary_path`` is the ``dict.txt`` the ids
    are checked against and ``preprocess_fix`` the fairseq-preprocess options that
    binarize this split again (e.g. ``--only-source --validpref TEXT``).
    """
    bin_path, idx_path = data_file_path(prefix), index_file_path(prefix)
    if not (os.path.isfile(bin_path) and os.path.isfile(idx_path)):
        return
    with open(idx_path, "rb") as f:
        if f.read(len(MMapIndexedDataset.Index._HDR_MAGIC)) != MMapIndexedDataset.Index._HDR_MAGIC:
            return  # another indexed format
    fix = (f"binarize it again: fairseq-preprocess {preprocess_fix} --srcdict "
           f"{dictionary_path} --destdir {os.path.dirname(prefix) or '.'}")
    try:
        index = MMapIndexedDataset.Index(idx_path)
        sizes, pointers, dtype = index.sizes, index._pointers, np.dtype(index.dtype)
    except (AssertionError, ValueError, KeyError, struct.error) as err:
        raise FairseqAWDError(f"{idx_path} is not a readable fairseq index ({err or 'cut short'}"
                              f"); {fix}") from None
    tokens = int(sizes.sum())
    expected = tokens * dtype.itemsize
    actual = os.path.getsize(bin_path)
    if len(sizes) and int(pointers[-1]) + int(sizes[-1]) * dtype.itemsize != expected:
        raise FairseqAWDError(f"{idx_path} does not describe one contiguous data file (its "
                              f"offsets do not add up to its sizes); {fix}")
    if actual != expected:
        raise FairseqAWDError(
            f"{bin_path} holds {actual} bytes but {idx_path} records {len(sizes)} sentences of "
            f"{tokens} tokens ({expected} bytes): the .bin was cut short or written by another "
            f"run than its .idx; {fix}"
        )
    if tokens == 0:
        return
    largest = int(np.memmap(bin_path, dtype=dtype, mode="r").max())
    if largest >= len(dictionary):
        raise FairseqAWDError(
            f"{bin_path} holds token id {largest}, beyond the {len(dictionary)} types of "
            f"{dictionary_path}: it was binarized with another dictionary; {fix}"
        )
