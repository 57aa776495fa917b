#!/usr/bin/env python3
"""Prepare and binarize the AWD-LSTM papers' corpora for fairseq.

Takes PTB (Mikolov's version), WikiText-2 or WikiText-103 (v1, tokenized) either from a
local directory (``--local DIR`` holding ``train.txt valid.txt test.txt`` or
``wiki.{train,valid,test}.tokens``) or downloads them into ``--raw-dir``, then runs
``fairseq-preprocess --only-source --padding-factor 1`` into ``--dest``. The output is
written to a temporary directory next to DEST and renamed at the end, so a failure never
leaves a partial DEST behind.

Example: python scripts/prepare_data.py --corpus ptb --dest data-bin/ptb
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

SPLITS = ("train", "valid", "test")
URLS = {
    "ptb": "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",
    "wikitext-2": "https://wikitext.smerity.com/wikitext-2-v1.zip",
    "wikitext-103": "https://wikitext.smerity.com/wikitext-103-v1.zip",
}


class PrepareError(Exception):
    """A problem with the user's input, reported as one line on stderr."""


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


def download(corpus: str, raw_dir: Path) -> Path:
    """Download and unpack ``corpus`` into ``raw_dir/corpus`` (cached); return that dir."""
    target = raw_dir / corpus
    if all((target / f"{split}.txt").is_file() for split in SPLITS):
        return target
    url = URLS[corpus]
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
    target.mkdir(exist_ok=True)
    for split in SPLITS:
        partial = target / f"{split}.txt.part"
        try:
            if corpus == "ptb":
                with tarfile.open(archive) as tar:
                    src = tar.extractfile(f"./simple-examples/data/ptb.{split}.txt")
                    if src is None:
                        raise KeyError(f"ptb.{split}.txt is not a file")
                    with src, partial.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
            else:
                with zipfile.ZipFile(archive) as zf, zf.open(
                        f"{corpus}/wiki.{split}.tokens") as src, partial.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        except (KeyError, tarfile.TarError, zipfile.BadZipFile) as err:
            partial.unlink(missing_ok=True)
            raise PrepareError(f"unexpected archive {archive} (delete it to retry): {err}") from err
        partial.rename(target / f"{split}.txt")
    return target


def count_entries(prefix: Path) -> tuple[int, int]:
    """Return (lines, tokens including one </s> per line) of a binarized split."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    dataset = MMapIndexedDataset(str(prefix))  # keep it alive: sizes is a view of its mmap
    return len(dataset.sizes), int(dataset.sizes.sum())


def binarize(files: dict[str, Path], dest: Path, workers: int, force: bool) -> None:
    """Run fairseq-preprocess into a temporary dir next to ``dest``, then move it there."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--corpus", required=True, choices=sorted(URLS), help="corpus name")
    parser.add_argument("--dest", required=True, type=Path, help="binarized output directory")
    parser.add_argument("--local", type=Path,
                        help="directory already holding the raw splits (no download)")
    parser.add_argument("--raw-dir", type=Path, default=Path("data-raw"),
                        help="download cache, used without --local")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="fairseq-preprocess worker processes")
    parser.add_argument("--force", action="store_true",
                        help="replace a DEST that holds a different dictionary")
    args = parser.parse_args(argv)
    try:
        raw = args.local if args.local is not None else download(args.corpus, args.raw_dir)
        binarize(find_splits(raw), args.dest, args.workers, args.force)
        vocab = sum(1 for _ in (args.dest / "dict.txt").open(encoding="utf-8")) + 4
        print(f"{args.corpus}: vocabulary {vocab} symbols (incl. 4 fairseq specials) "
              f"in {args.dest}")
        for split in SPLITS:
            lines, tokens = count_entries(args.dest / split)
            print(f"  {split}: {lines} lines, {tokens - lines} tokens, {tokens} with </s>")
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
