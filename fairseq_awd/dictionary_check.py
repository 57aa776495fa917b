"""Whether a dictionary gives every word the id a model was trained with: the one check
behind loading an AWD checkpoint, ``--pretrained-lm`` and shallow fusion's ``--lm-path``."""

import zlib
from typing import Collection, Optional

from fairseq.data import Dictionary

from fairseq_awd.errors import FairseqAWDError


def dictionary_fingerprint(dictionary: Dictionary, num_symbols: Optional[int] = None) -> int:
    """CRC32 of the dictionary's symbols in order (of its first ``num_symbols`` if given):
    equal only for the same word-to-id map."""
    return zlib.crc32("\n".join(dictionary.symbols[:num_symbols]).encode("utf-8"))


def check_dictionary(dictionary: Dictionary, trained_size: int, trained_fingerprint: int,
                     error: str, extra_symbols: Collection[str] = ()) -> None:
    """Raise ``FairseqAWDError(error)`` unless ``dictionary`` maps words to the ids of the
    dictionary a model was trained with, known by its size and ``dictionary_fingerprint``:
    its first ``trained_size`` symbols must have ``trained_fingerprint``, and any symbols
    after them must be among ``extra_symbols`` (e.g. the ``<mask>`` that fairseq's
    sentence_prediction task appends)."""
    if (len(dictionary) < trained_size
            or dictionary_fingerprint(dictionary, trained_size) != int(trained_fingerprint)
            or not set(dictionary.symbols[trained_size:]) <= set(extra_symbols)):
        raise FairseqAWDError(error)
