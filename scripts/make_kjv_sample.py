#!/usr/bin/env python3
"""Build the small King James Version sample used by the quick-start demo.

Writes ``train.txt`` (Genesis + Exodus), ``valid.txt`` (Luke 1-12) and ``test.txt``
(Luke 13-24) into OUTPUT_DIR: one verse per line, chapter headers and verse numbers
removed, wrapped lines joined, Moses-tokenized (sacremoses, ``escape=False``) and
lower-cased, like the Penn Treebank language-modelling data.

Needs the ``bible`` program from the Debian package ``bible-kjv``
(``apt-get install bible-kjv``) and ``pip install sacremoses``.

Usage: python scripts/make_kjv_sample.py examples/data/kjv
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from sacremoses import MosesTokenizer

# split name -> verse specifications understood by `bible`
SPLITS: dict[str, list[str]] = {
    "train": ["gen1:1-50:26", "exod1:1-40:38"],
    "valid": ["luke1:1-12:59"],
    "test": ["luke13:1-24:53"],
}
VERSE_RE = re.compile(r"^\s+(\d+) (.*)$")


def read_verses(spec: str) -> list[str]:
    """Return the verses of ``spec`` as printed by ``bible``, one string per verse."""
    out = subprocess.run(
        ["bible", spec], check=True, capture_output=True, text=True, env={"COLUMNS": "80"}
    ).stdout
    verses: list[str] = []
    after_blank = True
    for line in out.splitlines():
        if not line.strip():
            after_blank = True
            continue
        if after_blank and not line[0].isspace():  # chapter header, e.g. "Genesis 1"
            after_blank = False
            continue
        after_blank = False
        match = VERSE_RE.match(line)
        if match:
            verses.append(match.group(2).strip())
        elif verses:  # continuation of a wrapped verse
            verses[-1] += " " + line.strip()
        else:
            raise ValueError(f"unexpected line in `bible {spec}` output: {line!r}")
    return verses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="directory for train/valid/test.txt")
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = MosesTokenizer(lang="en")
    for split, specs in SPLITS.items():
        lines = [
            tokenizer.tokenize(verse, escape=False, return_str=True).lower()
            for spec in specs
            for verse in read_verses(spec)
        ]
        path = args.output_dir / f"{split}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tokens = sum(len(line.split()) for line in lines)
        print(f"{path}: {len(lines)} lines, {tokens} tokens, {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
