"""Character-level text as ``scripts/prepare_data.py`` writes it, one token per character.

A space is a visible word-boundary symbol (``_`` as in Mikolov's ``ptb.char`` files, or
another character where the text holds ``_``), any other whitespace but the newline is
written ``<U+XXXX>`` (fairseq's tokenizer would drop it), and each line is one line of the
text. A character-level data directory carries ``char-level.json`` with the format and the
boundary symbol, which evaluation and sampling read.
"""

import json
import os
import re
from typing import Optional

BOUNDARY = "_"
FALLBACK_BOUNDARY = "\u2581"
ESCAPE = re.compile(r"<U\+([0-9A-F]{4,6})>")
CHAR_INFO = "char-level.json"


def char_token(char: str, boundary: str = BOUNDARY) -> str:
    """The token of one character of a line: the boundary symbol for a space, ``<U+XXXX>``
    for any other whitespace, the character itself otherwise."""
    if char == " ":
        return boundary
    if char.isspace():
        return f"<U+{ord(char):04X}>"
    return char


def line_to_chars(line: str, boundary: str = BOUNDARY) -> str:
    """One line of text (without its newline) as space-separated character tokens."""
    return " ".join(char_token(c, boundary) for c in line)


def chars_to_line(tokens: str, boundary: str = BOUNDARY) -> str:
    """The inverse of :func:`line_to_chars`: ``chars_to_line(line_to_chars(s, b), b) == s``
    for every line ``s`` that does not contain ``b``. Other tokens (``<unk>`` in a sample)
    are kept as they are."""
    out = []
    for token in tokens.split():
        if token == boundary:
            out.append(" ")
        elif (match := ESCAPE.fullmatch(token)) is not None:
            out.append(chr(int(match.group(1), 16)))
        else:
            out.append(token)
    return "".join(out)


def read_char_info(data: str) -> Optional[dict]:
    """The ``char-level.json`` of the data directory ``data``, or None if it has none."""
    path = os.path.join(data, CHAR_INFO)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
