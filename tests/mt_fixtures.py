"""Tiny real translation fixtures shared by the rescoring and shallow-fusion tests.

A de->en transformer trained in seconds on 300 Multi30k task-1 pairs (Moses-tokenized,
subword-nmt BPE), binarized with a joined dictionary; its ``test`` split is task-1 val 0-39.
"""

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import List

from fairseq_cli_helpers import SHARED_DATA, run

MULTI30K = SHARED_DATA / "multi30k"
HAS_MULTI30K = (MULTI30K / "task1" / "train.de.gz").exists()
SKIP_REASON = "needs Multi30k in ../shared/data/multi30k (real translation data)"


@dataclass
class TranslationFixture:
    data: Path  # binarized de-en data: dict.de.txt = dict.en.txt (joined), test split
    checkpoint: Path
    codes: Path  # subword-nmt BPE codes
    test_source: List[str]  # Moses-tokenized German of the test split


def gz_lines(path: Path, start: int, stop: int) -> List[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for i, line in enumerate(f) if start <= i < stop]


def tokenized(lines: List[str], lang: str, lowercase: bool = False) -> List[str]:
    from sacremoses import MosesTokenizer

    tok = MosesTokenizer(lang)
    out = [tok.tokenize(line, escape=False, return_str=True) for line in lines]
    return [line.lower() for line in out] if lowercase else out


def apply_bpe(codes: Path, lines: List[str]) -> List[str]:
    from subword_nmt.apply_bpe import BPE

    with open(codes, encoding="utf-8") as f:
        bpe = BPE(f)
    return [bpe.process_line(line) for line in lines]


def train_translation_model(root: Path, task1: Path = MULTI30K / "task1") -> TranslationFixture:
    """Tiny de->en transformer on 300 Moses-tokenized, BPE'd pairs (50 updates)."""
    from subword_nmt.learn_bpe import learn_bpe

    raw = {"train": ("train", 300), "test": ("val", 40)}
    text = {(split, lang): tokenized(gz_lines(task1 / f"{name}.{lang}.gz", 0, n), lang)
            for split, (name, n) in raw.items() for lang in ("de", "en")}
    joined = root / "joined.tok"
    joined.write_text("\n".join(text["train", "de"] + text["train", "en"]) + "\n")
    codes = root / "codes"
    with open(joined, encoding="utf-8") as fin, open(codes, "w", encoding="utf-8") as fout:
        learn_bpe(fin, fout, 300)
    raw_dir = root / "mt-raw"
    raw_dir.mkdir()
    for (split, lang), lines in text.items():
        (raw_dir / f"{split}.{lang}").write_text(
            "".join(line + "\n" for line in apply_bpe(codes, lines)), encoding="utf-8")
    mt_bin = root / "mt-bin"
    run("preprocess", ["--source-lang", "de", "--target-lang", "en", "--joined-dictionary",
                       "--destdir", str(mt_bin), "--workers", "1",
                       *[a for s in raw for a in (f"--{s}pref", str(raw_dir / s))]])
    mt_dir = train_tiny_transformer(mt_bin, root / "mt", "de", "en")
    return TranslationFixture(mt_bin, mt_dir / "checkpoint_last.pt", codes, text["test", "de"])


def train_tiny_transformer(data: Path, save_dir: Path, source: str, target: str) -> Path:
    """The fixtures' 1+1-layer transformer trained for 50 updates on ``data`` in the
    direction ``source -> target`` (either direction reads the same binarized pairs)."""
    run("train", [
        str(data), "--source-lang", source, "--target-lang", target,
        "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
        "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
        "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2", "--share-all-embeddings", "--optimizer", "adam",
        "--lr", "0.005", "--batch-size", "32", "--max-update", "50", "--cpu", "--seed", "1",
        "--save-dir", str(save_dir), "--save-interval", "1000", "--disable-validation",
        "--no-progress-bar", "--log-interval", "1000",
    ])
    return save_dir
