"""Tests for ``scripts/prepare_data.py --local`` on small slices of real corpora.

The slices come from ``../shared/data`` next to the repository; tests that need them are
skipped when it is absent. The three fairseq-preprocess runs start together (each spends
most of its time importing fairseq) to keep the file fast.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "prepare_data.py"
SHARED_DATA = ROOT.parent / "shared" / "data"
SLICE_LINES = 2000
needs_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"real-text corpora not found at {SHARED_DATA}"
)

# case -> (corpus, source dir under shared/data, file-name pattern written to the slice)
CORPORA = {
    "ptb": ("ptb", "penn", "{}.txt"),
    "wt2": ("wikitext-2", "wikitext-2", "wiki.{}.tokens"),
}


def command(corpus: str, local: Path, dest: Path) -> list[str]:
    """The prepare_data.py command line for a local corpus."""
    return [sys.executable, str(SCRIPT), "--corpus", corpus, "--local", str(local),
            "--dest", str(dest), "--workers", "1"]


def write_slice(source: Path, raw: Path, pattern: str) -> None:
    """Copy the first SLICE_LINES lines of each split of ``source`` into ``raw``."""
    raw.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        with (source / f"{split}.txt").open(encoding="utf-8") as f:
            lines = [line for _, line in zip(range(SLICE_LINES), f)]
        (raw / pattern.format(split)).write_text("".join(lines), encoding="utf-8")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, tuple]]:
    """Run prepare_data.py concurrently on each slice and on a conflicting destination.

    Returns case -> (raw dir, dest dir, (returncode, stdout, stderr)).
    """
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-text corpora not found at {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("prepare")
    cases = {}
    for case, (corpus, source, pattern) in CORPORA.items():
        write_slice(SHARED_DATA / source, tmp / "raw" / case, pattern)
        cases[case] = (corpus, tmp / "raw" / case, tmp / "out" / case)
    # an existing destination whose dictionary differs from the one being built
    conflict = tmp / "conflict" / "ptb"
    conflict.mkdir(parents=True)
    (conflict / "dict.txt").write_text("other 1\n", encoding="utf-8")
    cases["conflict"] = ("ptb", tmp / "raw" / "ptb", conflict)
    procs = {
        case: subprocess.Popen(command(corpus, raw, dest), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        for case, (corpus, raw, dest) in cases.items()
    }
    import fairseq.data  # noqa: F401  (slow import, overlapped with the runs)

    results = {}
    for case, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[case] = (cases[case][1], cases[case][2], (proc.returncode, stdout, stderr))
    return results


@needs_data
@pytest.mark.parametrize("case", sorted(CORPORA))
def test_binarized_slice_matches_text(runs: dict, case: str) -> None:
    from fairseq.data import Dictionary, data_utils

    raw, dest, (returncode, stdout, stderr) = runs[case]
    assert returncode == 0, stderr
    assert (dest / "dict.txt").is_file()
    assert not list(dest.parent.glob(f".{dest.name}.tmp-*"))
    train = next(raw.glob("*train*")).read_text(encoding="utf-8").splitlines()
    words = [line.split() for line in train]
    types = {word for line in words for word in line}
    dictionary = Dictionary.load(str(dest / "dict.txt"))
    # PTB's "<unk>" is fairseq's own <unk>; the 4 specials are <s> <pad> </s> <unk>
    assert len(dictionary) == len(types - {"<unk>"}) + 4
    assert f"vocabulary {len(dictionary)} symbols" in stdout

    dataset = data_utils.load_indexed_dataset(str(dest / "train"), dictionary)
    n_tokens = sum(len(line) for line in words)
    assert len(dataset) == len(train)
    assert int(dataset.sizes.sum()) == n_tokens + len(train)
    assert f"train: {len(train)} lines, {n_tokens} tokens" in stdout
    first = next(i for i, line in enumerate(words) if line)
    assert dataset[first][-1].item() == dictionary.eos()
    assert dictionary.string(dataset[first][:-1]) == " ".join(words[first])
    for split in ("valid", "test"):
        assert (dest / f"{split}.bin").is_file() and (dest / f"{split}.idx").is_file()


@needs_data
def test_refuses_destination_with_different_dict(runs: dict) -> None:
    _, dest, (returncode, stdout, stderr) = runs["conflict"]
    assert returncode == 1
    assert stderr.strip().count("\n") == 0 and "--force" in stderr
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no temp dir left
    assert (dest / "dict.txt").read_text(encoding="utf-8") == "other 1\n"


@pytest.mark.parametrize("problem", ["missing-dir", "missing-split", "empty-train"])
def test_bad_input_fails_cleanly(tmp_path: Path, problem: str) -> None:
    raw = tmp_path / "raw"
    if problem != "missing-dir":
        raw.mkdir()
        for split in ("train", "valid", "test"):
            (raw / f"{split}.txt").write_text("a b c\n", encoding="utf-8")
        if problem == "missing-split":
            (raw / "valid.txt").unlink()
        else:
            (raw / "train.txt").write_text("\n\n", encoding="utf-8")
    dest = tmp_path / "out" / "ptb"
    result = subprocess.run(command("ptb", raw, dest), capture_output=True, text=True)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert not dest.exists() and not (tmp_path / "out").exists()
