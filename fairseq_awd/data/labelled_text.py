"""Labelled text files for classification: ``label<TAB>text`` lines, or TREC's own
``COARSE:fine text`` lines (the coarse label is the class). The text is taken as it is
(tokenized or not); runs of whitespace become one space."""

from pathlib import Path
from typing import List, NamedTuple, Sequence

from fairseq_awd.errors import FairseqAWDError

FORMATS = ("tsv", "trec")


class Example(NamedTuple):
    label: str
    text: str
    line: int  # 1-based line number in its file


def read_labelled(path: Path, fmt: str = "tsv") -> List[Example]:
    """Every line of ``path`` as an ``Example``; FairseqAWDError naming ``path:line`` for a
    line that is empty, not UTF-8, has no label separator (a tab, or TREC's ``:``), or has
    no label or no text."""
    if fmt not in FORMATS:
        raise FairseqAWDError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if not Path(path).is_file():
        raise FairseqAWDError(f"{path}: no such file")
    expected = "'label<TAB>text'" if fmt == "tsv" else "'COARSE:fine text' (TREC)"
    examples = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
            except UnicodeDecodeError as err:
                raise FairseqAWDError(f"{path}:{number}: not UTF-8 ({err.reason} at byte "
                                      f"{err.start}): convert the file to UTF-8") from err
            if fmt == "tsv":
                label, tab, text = line.partition("\t")
                problem = None if tab else "no tab"
            else:
                label, space, text = line.partition(" ")
                coarse, colon, fine = label.partition(":")
                problem = None if colon and coarse and fine else "no 'COARSE:fine' label"
                label = coarse
            text = " ".join(text.split())
            if not line.strip():
                problem = "empty line"
            elif problem is None and not label.strip():
                problem = "empty label"
            elif problem is None and not text:
                problem = "empty text"
            if problem:
                raise FairseqAWDError(f"{path}:{number}: {problem}: expected {expected}, got "
                                      f"{line[:60]!r}")
            examples.append(Example(label.strip(), text, number))
    if not examples:
        raise FairseqAWDError(f"{path}: no examples: expected {expected} lines")
    return examples


def check_labels_seen(train: Sequence[Example], other: Sequence[Example], other_path: Path,
                      train_path: Path) -> None:
    """FairseqAWDError at the first example of ``other`` whose label never occurs in
    ``train``: a classifier cannot learn it."""
    seen = {example.label for example in train}
    for example in other:
        if example.label not in seen:
            raise FairseqAWDError(
                f"{other_path}:{example.line}: label {example.label!r} never occurs in the "
                f"training file {train_path} (labels there: {', '.join(sorted(seen))}): drop "
                "those examples or add training examples of that label")
