#!/usr/bin/env python3
"""Prepare and binarize the AWD-LSTM papers' corpora for fairseq.

Word level: PTB (Mikolov's version), WikiText-2 or WikiText-103 (v1, tokenized), either
from a local directory (``--local DIR`` holding ``train.txt valid.txt test.txt`` or
``wiki.{train,valid,test}.tokens``) or downloaded into ``--raw-dir``.

Character level:

* ``--corpus ptb-char``: the character-level PTB of Mikolov's ``ptb.char.*.txt`` files, built
  from the word-level PTB (each character separated by a space, each word boundary written
  ``_``). When Mikolov's files are there too (the download, or ``--local DIR`` holding
  ``ptb.char.{train,valid,test}.txt``), those are binarized and the built lines are checked
  against them; a DIR whose ``train.txt`` is already character-level (the reference's
  ``data/pennchar``) is taken as it is.
* ``--corpus enwik8``: the reference's ``prep_enwik8.py`` split of the first 100M bytes of
  Wikipedia (all but the last 10M bytes for training, then 5M for validation, the last 5M
  for test), one token per byte (its decimal value), each newline byte a line end.
  ``--local`` is a directory holding ``enwik8`` or ``enwik8.zip``, or that file.
* ``--char TEXTFILE``: any UTF-8 text, one line per line, each character a token, each space
  written as a visible word-boundary symbol (``_``, or ``▁`` U+2581 when the text holds
  ``_``; ``--boundary`` picks another) and every other whitespace character but the newline
  as ``<U+XXXX>``. The last ``--valid-fraction`` and ``--test-fraction`` of the lines are
  the held-out splits (contiguous tails: train, then valid, then test).
  :func:`chars_to_line` turns such a line back into the original text exactly.

Each character-level DEST also gets ``char-level.json`` (the format and boundary symbol),
which ``fairseq-awd-eval`` reads to report bits per character and which
``scripts/sample_chars.py`` reads to decode samples.

Then it runs ``fairseq-preprocess --only-source --padding-factor 1`` into ``--dest``. The
output is written to a temporary directory next to DEST and renamed at the end, so a
failure never leaves a partial DEST behind.

Example: python scripts/prepare_data.py --corpus ptb --dest data-bin/ptb
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterator


def _load_char_text():
    """``fairseq_awd/data/char_text.py``, the character format that the package reads back,
    loaded by path: importing ``fairseq_awd`` would import fairseq, which this script does
    not need (it runs fairseq-preprocess) and whose import-time log lines would come before
    its one-line errors."""
    path = Path(__file__).resolve().parents[1] / "fairseq_awd" / "data" / "char_text.py"
    spec = importlib.util.spec_from_file_location("fairseq_awd_char_text", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_char_text = _load_char_text()
BOUNDARY, FALLBACK_BOUNDARY, CHAR_INFO = (
    _char_text.BOUNDARY, _char_text.FALLBACK_BOUNDARY, _char_text.CHAR_INFO)
char_token, line_to_chars, chars_to_line, read_char_info = (
    _char_text.char_token, _char_text.line_to_chars, _char_text.chars_to_line,
    _char_text.read_char_info)

SPLITS = ("train", "valid", "test")
PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
URLS = {
    "ptb": PTB_URL,
    "ptb-char": PTB_URL,
    "wikitext-2": "https://wikitext.smerity.com/wikitext-2-v1.zip",
    "wikitext-103": "https://wikitext.smerity.com/wikitext-103-v1.zip",
    "enwik8": "http://mattmahoney.net/dc/enwik8.zip",
}
# prep_enwik8.py: num_test_chars = 5000000, valid and test each that long
ENWIK8_HELDOUT_BYTES = 5_000_000
BYTE_TOKENS = [str(i) for i in range(256)]


class PrepareError(Exception):
    """A problem with the user's input, reported as one line on stderr."""


# ---- character-level text -------------------------------------------------------------

def ptb_line_to_chars(line: str) -> str:
    """A word-level PTB line as Mikolov's ptb.char files write it: the characters of each
    word separated by spaces, the words by ``_`` (``pierre <unk> N`` -> ``p i e r r e _ < u
    n k > _ N``); the line's leading and trailing space are dropped."""
    return f" {BOUNDARY} ".join(" ".join(word) for word in line.split())


def choose_boundary(text: str, requested: str | None = None) -> str:
    """A visible word-boundary symbol that does not occur in ``text``."""
    if requested is not None:
        if len(requested) != 1 or requested.isspace():
            raise PrepareError(f"--boundary must be one visible character, got {requested!r}")
        if requested in text:
            raise PrepareError(f"--boundary {requested!r} occurs in the text: choose a "
                               "character that does not")
        return requested
    for symbol in (BOUNDARY, FALLBACK_BOUNDARY):
        if symbol not in text:
            return symbol
    raise PrepareError(f"both {BOUNDARY!r} and {FALLBACK_BOUNDARY!r} (U+2581) occur in the "
                       "text, so neither can mark word boundaries: give --boundary with a "
                       "character that does not occur")


def read_text(path: Path) -> str:
    """The whole of a UTF-8 text file, checked to hold some characters."""
    if not path.is_file():
        raise PrepareError(f"text file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise PrepareError(f"{path} is not UTF-8 text: {err}") from None
    if not text.strip("\n"):
        raise PrepareError(f"text file is empty: {path}")
    return text


def text_lines(text: str) -> list[str]:
    """The lines of ``text``, split at ``\\n`` only (a final newline ends the last line)."""
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines


def split_lines(lines: list[str], valid_fraction: float, test_fraction: float,
                source: str = "the text") -> dict[str, list[str]]:
    """train / valid / test as contiguous blocks: the last ``test_fraction`` of the lines is
    test, the ``valid_fraction`` before it valid, the rest train (fractions rounded to whole
    lines). Each split must hold at least one character."""
    for name, value in (("--valid-fraction", valid_fraction), ("--test-fraction", test_fraction)):
        if not 0 < value < 1:
            raise PrepareError(f"{name} must be in (0, 1), got {value}")
    if valid_fraction + test_fraction >= 1:
        raise PrepareError("--valid-fraction and --test-fraction leave no training text: "
                           f"{valid_fraction} + {test_fraction} >= 1")
    n = len(lines)
    n_test = round(n * test_fraction)
    n_train = n - round(n * valid_fraction) - n_test
    splits = {"train": lines[:n_train], "valid": lines[n_train:n - n_test],
              "test": lines[n - n_test:]}
    for split, block in splits.items():
        if not any(block):
            raise PrepareError(
                f"{source} has {n} lines, too few to split: {split} would get {len(block)} "
                f"lines with no characters (valid {valid_fraction:g}, test {test_fraction:g} "
                "of the lines, train the rest); give more text or larger fractions")
    return splits


def write_char_splits(splits: dict[str, list[str]], boundary: str, workdir: Path,
                      convert=None) -> dict[str, Path]:
    """Write each split's lines as character tokens into ``workdir``; return the files."""
    convert = convert or (lambda line: line_to_chars(line, boundary))
    files = {}
    for split, lines in splits.items():
        files[split] = workdir / f"{split}.txt"
        with files[split].open("w", encoding="utf-8") as f:
            for line in lines:
                f.write(convert(line) + "\n")
    return files


# ---- PTB characters ------------------------------------------------------------------------

def looks_character_level(path: Path, lines: int = 100) -> bool:
    """Whether the first non-blank ``lines`` of ``path`` hold single characters only (as
    Mikolov's ptb.char files, and never the word-level PTB, do)."""
    seen = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            tokens = line.split()
            if not tokens:
                continue
            if any(len(t) != 1 for t in tokens):
                return False
            seen += 1
            if seen == lines:
                break
    return seen > 0


def compare_with_mikolov(built: dict[str, list[str]], mikolov: dict[str, Path]) -> str:
    """Compare the character lines built from the word-level PTB with Mikolov's ptb.char
    files, line by line modulo leading and trailing whitespace; return the verdict."""
    report = []
    for split in SPLITS:
        theirs = mikolov[split].read_text(encoding="utf-8").splitlines()
        ours = built[split]
        bad = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a.strip() != b.strip()]
        if len(ours) != len(theirs) or bad:
            where = (f"first at line {bad[0] + 1}: built {ours[bad[0]].strip()!r}, "
                     f"{mikolov[split].name} {theirs[bad[0]].strip()!r}" if bad else
                     f"{len(ours)} lines built, {len(theirs)} in {mikolov[split].name}")
            return f"warning: ptb-char: the lines built from the word-level PTB differ from " \
                   f"Mikolov's {split} file on {len(bad)} lines ({where}); binarized Mikolov's"
        report.append(f"{split} {len(ours):,}")
    return ("ptb-char: the lines built from the word-level PTB agree with Mikolov's "
            f"ptb.char.*.txt (lines: {', '.join(report)}; compared modulo leading and "
            "trailing whitespace)")


def ptb_char_sources(raw: Path) -> tuple[dict[str, Path], dict[str, Path] | None]:
    """Where the character-level PTB comes from in ``raw``: ``(files, mikolov)``, with
    ``files`` the word-level splits to build from (None when there are only Mikolov's
    files) and ``mikolov`` Mikolov's ``ptb.char.*.txt`` (None when absent). A ``train.txt``
    that is already character-level (the reference's ``data/pennchar``) counts as
    Mikolov's."""
    mikolov = {split: raw / f"ptb.char.{split}.txt" for split in SPLITS}
    if not all(path.is_file() for path in mikolov.values()):
        mikolov = None
    if mikolov is not None and not all((raw / f"{s}.txt").is_file() for s in SPLITS):
        return None, mikolov
    files = find_splits(raw)  # raises with the name of a missing or empty file
    if looks_character_level(files["train"]):
        return None, files
    return files, mikolov


def prepare_ptb_char(files: dict[str, Path] | None, mikolov: dict[str, Path] | None,
                     workdir: Path) -> tuple[dict[str, Path], str | None]:
    """The character-level PTB: the splits to binarize (Mikolov's when there, else built
    from the word-level ``files`` into ``workdir``) and the verdict of comparing the two
    (None when only one of them is there)."""
    if files is None:
        return mikolov, None
    built = {}
    for split, path in files.items():
        with path.open(encoding="utf-8") as f:
            built[split] = [ptb_line_to_chars(line) for line in f]
    if mikolov is not None:
        return mikolov, compare_with_mikolov(built, mikolov)
    return write_char_splits(built, BOUNDARY, workdir, convert=lambda line: line), None


# ---- enwik8 --------------------------------------------------------------------------------

def enwik8_splits(data: bytes, valid_bytes: int = ENWIK8_HELDOUT_BYTES,
                  test_bytes: int = ENWIK8_HELDOUT_BYTES) -> dict[str, bytes]:
    """prep_enwik8.py's split: test the last ``test_bytes``, valid the ``valid_bytes`` before
    them, train all the rest (90M, 5M and 5M bytes of enwik8's 100M)."""
    if valid_bytes < 1 or test_bytes < 1:
        raise PrepareError(f"held-out sizes must be positive, got {valid_bytes} and {test_bytes}")
    if len(data) <= valid_bytes + test_bytes:
        raise PrepareError(f"enwik8 data has {len(data):,} bytes, not more than the "
                           f"{valid_bytes + test_bytes:,} held out for valid and test")
    heldout = valid_bytes + test_bytes
    return {"train": data[:-heldout], "valid": data[-heldout:-test_bytes],
            "test": data[-test_bytes:]}


def bytes_to_token_lines(data: bytes) -> Iterator[str]:
    """Bytes as prep_enwik8.py writes them: each byte its decimal value, space-separated,
    each newline byte a line break (so one ``</s>`` in fairseq). A final unterminated line
    gets its ``</s>`` as in the reference's loader."""
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return (" ".join(map(BYTE_TOKENS.__getitem__, line)) for line in lines)


def token_lines_to_bytes(lines: list[str]) -> bytes:
    """The inverse of :func:`bytes_to_token_lines` (every line ends with a newline)."""
    return b"".join(bytes(int(t) for t in line.split()) + b"\n" for line in lines)


def read_enwik8(source: Path) -> bytes:
    """enwik8's bytes from a directory holding ``enwik8`` or ``enwik8.zip``, or that file."""
    if source.is_dir():
        found = [source / name for name in ("enwik8", "enwik8.zip") if (source / name).is_file()]
        if not found:
            raise PrepareError(f"no enwik8 or enwik8.zip in {source}")
        source = found[0]
    elif not source.is_file():
        raise PrepareError(f"enwik8 not found: {source}")
    if zipfile.is_zipfile(source):
        try:
            with zipfile.ZipFile(source) as zf:
                return zf.read("enwik8")
        except (KeyError, zipfile.BadZipFile) as err:
            raise PrepareError(f"unexpected archive {source} (no enwik8 in it): {err}") from None
    return source.read_bytes()


def write_enwik8(data: bytes, valid_bytes: int, test_bytes: int, workdir: Path) -> dict[str, Path]:
    files = {}
    for split, part in enwik8_splits(data, valid_bytes, test_bytes).items():
        files[split] = workdir / f"{split}.txt"
        with files[split].open("w", encoding="ascii") as f:
            for line in bytes_to_token_lines(part):
                f.write(line + "\n")
    return files


# ---- downloads and binarization --------------------------------------------------------------

def find_splits(directory: Path) -> dict[str, Path]:
    """Return the train/valid/test files of ``directory``, checking they hold text."""
    if not directory.is_dir():
        raise PrepareError(f"data directory not found: {directory}")
    files = {}
    for split in SPLITS:
        names = (f"{split}.txt", f"wiki.{split}.tokens")
        path = next((directory / n for n in names if (directory / n).is_file()), None)
        if path is None:
            raise PrepareError(f"no {' or '.join(names)} in {directory}")
        with path.open("rb") as f:  # stop at the first non-blank line
            if not any(line.strip() for line in f):
                raise PrepareError(f"split file is empty: {path}")
        files[split] = path
    return files


def fetch(url: str, raw_dir: Path) -> Path:
    """Download ``url`` into ``raw_dir`` unless it is there already; return the file."""
    archive = raw_dir / url.rsplit("/", 1)[1]
    if not archive.is_file():
        print(f"downloading {url}", file=sys.stderr)
        raw_dir.mkdir(parents=True, exist_ok=True)
        partial = archive.with_name(archive.name + ".part")
        try:
            urllib.request.urlretrieve(url, partial)
        except OSError as err:
            partial.unlink(missing_ok=True)
            raise PrepareError(f"download of {url} failed: {err}") from err
        partial.rename(archive)
    return archive


def download(corpus: str, raw_dir: Path) -> Path:
    """Download and unpack ``corpus`` into ``raw_dir/corpus`` (cached); return that dir.
    ``ptb-char`` unpacks into ``raw_dir/ptb``: the word-level files and Mikolov's
    ``ptb.char.*.txt``."""
    if corpus in ("ptb", "ptb-char"):
        target = raw_dir / "ptb"
        members = {f"{split}.txt": f"ptb.{split}.txt" for split in SPLITS}
        if corpus == "ptb-char":
            members.update({f"ptb.char.{split}.txt": f"ptb.char.{split}.txt" for split in SPLITS})
    else:
        target = raw_dir / corpus
        members = {f"{split}.txt": f"wiki.{split}.tokens" for split in SPLITS}
    if all((target / name).is_file() for name in members):
        return target
    archive = fetch(URLS[corpus], raw_dir)
    target.mkdir(exist_ok=True)
    for name, member in members.items():
        partial = target / f"{name}.part"
        try:
            if corpus in ("ptb", "ptb-char"):
                with tarfile.open(archive) as tar:
                    src = tar.extractfile(f"./simple-examples/data/{member}")
                    if src is None:
                        raise KeyError(f"{member} is not a file")
                    with src, partial.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
            else:
                with zipfile.ZipFile(archive) as zf, zf.open(
                        f"{corpus}/{member}") as src, partial.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        except (KeyError, tarfile.TarError, zipfile.BadZipFile) as err:
            partial.unlink(missing_ok=True)
            raise PrepareError(f"unexpected archive {archive} (delete it to retry): {err}") from err
        partial.rename(target / name)
    return target


def count_entries(prefix: Path) -> tuple[int, int]:
    """Return (lines, tokens including one </s> per line) of a binarized split."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    dataset = MMapIndexedDataset(str(prefix))  # keep it alive: sizes is a view of its mmap
    return len(dataset.sizes), int(dataset.sizes.sum())


def binarize(files: dict[str, Path], dest: Path, workers: int, force: bool,
             extra: dict[str, str] | None = None) -> None:
    """Run fairseq-preprocess into a temporary dir next to ``dest``, add the ``extra`` files
    (name -> text), then move it there."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--only-source",
               "--trainpref", str(files["train"]), "--validpref", str(files["valid"]),
               "--testpref", str(files["test"]), "--destdir", str(tmp),
               "--workers", str(workers), "--padding-factor", "1"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            sys.stderr.write(result.stdout + result.stderr)
            raise PrepareError(f"fairseq-preprocess failed with status {result.returncode}")
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if dest.exists():
            if not dest.is_dir():
                raise PrepareError(f"destination is not a directory: {dest}")
            old = dest / "dict.txt"
            same = not any(dest.iterdir()) or (
                old.is_file() and filecmp.cmp(old, tmp / "dict.txt", shallow=False))
            if not same and not force:
                what = "a different dict.txt" if old.is_file() else "no dict.txt"
                raise PrepareError(f"{dest} exists with {what}; use --force to replace it")
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def char_info(fmt: str, source: str, **fields) -> str:
    """The ``char-level.json`` of a character-level DEST."""
    return json.dumps(dict(format=fmt, source=source, line_end="</s>", **fields),
                      ensure_ascii=False, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--corpus", choices=sorted(URLS), help="corpus name")
    what.add_argument("--char", type=Path, metavar="TEXTFILE",
                      help="any UTF-8 text file, prepared at the character level")
    parser.add_argument("--dest", required=True, type=Path, help="binarized output directory")
    parser.add_argument("--local", type=Path,
                        help="directory already holding the raw splits (no download); for "
                        "enwik8 a directory with enwik8 or enwik8.zip, or that file")
    parser.add_argument("--raw-dir", type=Path, default=Path("data-raw"),
                        help="download cache, used without --local")
    parser.add_argument("--boundary", help="with --char: the word-boundary symbol (default: _ "
                        "if the text has none, else U+2581)")
    parser.add_argument("--valid-fraction", type=float,
                        help="with --char: fraction of the lines held out for valid (default "
                        "0.05)")
    parser.add_argument("--test-fraction", type=float,
                        help="with --char: fraction of the lines held out for test, the tail "
                        "(default 0.05)")
    parser.add_argument("--enwik8-heldout-bytes", type=int,
                        help="with --corpus enwik8: bytes of valid and of test each (default "
                        f"{ENWIK8_HELDOUT_BYTES:,}, the reference's)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="fairseq-preprocess worker processes")
    parser.add_argument("--force", action="store_true",
                        help="replace a DEST that holds a different dictionary")
    args = parser.parse_args(argv)
    name = args.corpus or args.char.name
    unit = "characters"
    workdir = None
    try:
        applies = {  # option: (its value, whether it applies)
            "--boundary": (args.boundary, args.char is not None),
            "--valid-fraction": (args.valid_fraction, args.char is not None),
            "--test-fraction": (args.test_fraction, args.char is not None),
            "--local": (args.local, args.char is None),
            "--enwik8-heldout-bytes": (args.enwik8_heldout_bytes, args.corpus == "enwik8"),
        }
        misplaced = [option for option, (value, ok) in applies.items()
                     if value is not None and not ok]
        if misplaced:
            raise PrepareError(f"{', '.join(misplaced)}: not for this corpus (--boundary and "
                               "the fractions go with --char, --local with --corpus, "
                               "--enwik8-heldout-bytes with --corpus enwik8)")
        fractions = (0.05 if args.valid_fraction is None else args.valid_fraction,
                     0.05 if args.test_fraction is None else args.test_fraction)
        heldout = args.enwik8_heldout_bytes or ENWIK8_HELDOUT_BYTES
        extra, verdict = {}, None
        if args.char is not None:
            text = read_text(args.char)
            boundary = choose_boundary(text, args.boundary)
            splits = split_lines(text_lines(text), *fractions, str(args.char))
            del text
        elif args.corpus == "enwik8":
            data = read_enwik8(args.local if args.local is not None
                               else fetch(URLS["enwik8"], args.raw_dir))
            enwik8_splits(data, heldout, heldout)  # checks the sizes before writing
            unit = "bytes"
        else:
            raw = args.local if args.local is not None else download(args.corpus, args.raw_dir)
            if args.corpus == "ptb-char":
                if not raw.is_dir():
                    raise PrepareError(f"data directory not found: {raw}")
                ptb_files, mikolov = ptb_char_sources(raw)
            else:
                words = find_splits(raw)
        if args.corpus not in ("ptb", "wikitext-2", "wikitext-103"):  # the text to binarize
            args.dest.parent.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix=f".{args.dest.name}.text-",
                                            dir=args.dest.parent))
        if args.char is not None:
            files = write_char_splits(splits, boundary, workdir)
            extra[CHAR_INFO] = char_info(
                "characters", str(args.char), boundary=boundary, escape="<U+XXXX>",
                lines={split: len(block) for split, block in splits.items()})
        elif args.corpus == "enwik8":
            files = write_enwik8(data, heldout, heldout, workdir)
            del data
            extra[CHAR_INFO] = char_info("bytes", "enwik8", token="decimal byte value")
        elif args.corpus == "ptb-char":
            files, verdict = prepare_ptb_char(ptb_files, mikolov, workdir)
            extra[CHAR_INFO] = char_info("characters", "ptb-char", boundary=BOUNDARY)
        else:
            files, unit = words, "tokens"
        binarize(files, args.dest, args.workers, args.force, extra)
        if verdict is not None:
            print(verdict, file=sys.stderr if verdict.startswith("warning") else sys.stdout)
        vocab = sum(1 for _ in (args.dest / "dict.txt").open(encoding="utf-8")) + 4
        print(f"{name}: vocabulary {vocab} symbols (incl. 4 fairseq specials) in {args.dest}")
        if args.char is not None:
            print(f"  word boundary: {boundary!r}; held out: the last {fractions[1]:g} of the "
                  f"lines (test) and the {fractions[0]:g} before them (valid)")
        for split in SPLITS:
            lines, tokens = count_entries(args.dest / split)
            print(f"  {split}: {lines} lines, {tokens - lines} {unit}, {tokens} with </s>")
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
