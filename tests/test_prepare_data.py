"""Tests for ``scripts/prepare_data.py --local`` on small slices of real corpora.

The slices come from ``../shared/data`` next to the repository; tests that need them are
skipped when it is absent. The three fairseq-preprocess runs start together (each spends
most of its time importing fairseq) to keep the file fast. The character-level tests
(``ptb-char``, ``enwik8``, ``--char``) use the real text when it is there and a built-in
sample or synthetic bytes otherwise.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from fairseq_cli_helpers import REPO, SHARED_DATA

pytestmark = pytest.mark.e2e  # runs fairseq's or the plugin's commands

SCRIPT = REPO / "scripts" / "prepare_data.py"
_spec = importlib.util.spec_from_file_location("prepare_data", SCRIPT)
prep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prep)
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


# ---- character level -----------------------------------------------------------------------

# Awkward lines for the round trip: runs of spaces, leading and trailing spaces, tabs, a
# carriage return, a no-break space, non-ASCII letters, the escape's own spelling, empty lines.
SAMPLE_TEXT = (
    "First Citizen:\n"
    "Before we proceed any further, hear me speak.\n"
    "\n"
    "  two leading spaces, two trailing  \n"
    "a\ttab, double  space and a no-break\u00a0space\r\n"
    "caf\u00e9 na\u00efve \u00c5ngstr\u00f6m <U+0009> [brackets] <unk> 1,234.5\n"
)
TINY_SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
PTB_TRAIN = SHARED_DATA / "penn" / "train.txt"
# Mikolov's ptb.char format (the first two lines of ptb.char.train.txt)
PTB_EXAMPLES = {
    " aer banknote berlitz calloway centrust cluett fromstein gitano guterman hydro-quebec "
    "ipo kia memotec mlx nahb punts rake regatta rubens sim snack-food ssangyong swapo "
    "wachter \n":
    "a e r _ b a n k n o t e _ b e r l i t z _ c a l l o w a y _ c e n t r u s t _ c l u e "
    "t t _ f r o m s t e i n _ g i t a n o _ g u t e r m a n _ h y d r o - q u e b e c _ "
    "i p o _ k i a _ m e m o t e c _ m l x _ n a h b _ p u n t s _ r a k e _ r e g a t t a "
    "_ r u b e n s _ s i m _ s n a c k - f o o d _ s s a n g y o n g _ s w a p o _ w a c h "
    "t e r",
    " pierre <unk> N years old will join the board as a nonexecutive director nov. N \n":
    "p i e r r e _ < u n k > _ N _ y e a r s _ o l d _ w i l l _ j o i n _ t h e _ b o a r "
    "d _ a s _ a _ n o n e x e c u t i v e _ d i r e c t o r _ n o v . _ N",
}


def real_lines(path: Path, n: int) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [line.rstrip("\n") for _, line in zip(range(n), f)]


@pytest.mark.parametrize("source", ["sample", "tinyshakespeare", "ptb"])
def test_characters_round_trip_exactly(source: str) -> None:
    if source == "sample":
        text = SAMPLE_TEXT
    else:
        path = TINY_SHAKESPEARE if source == "tinyshakespeare" else PTB_TRAIN
        if not path.is_file():
            pytest.skip(f"{path} not found")
        text = path.read_text(encoding="utf-8")
    boundary = prep.choose_boundary(text)
    assert boundary == "_"
    lines = prep.text_lines(text)
    assert "\n".join(lines) + "\n" == text
    for line in lines[:5000]:
        tokens = prep.line_to_chars(line, boundary)
        assert len(tokens.split()) == len(line)  # one token per character
        assert tokens == " ".join(tokens.split())  # nothing fairseq's tokenizer would drop
        assert prep.chars_to_line(tokens, boundary) == line
    assert prep.line_to_chars("a\tb  c", "_") == "a <U+0009> b _ _ c"


def test_boundary_symbol_never_collides_with_the_text() -> None:
    text = "snake_case and more_underscores\n"
    boundary = prep.choose_boundary(text)
    assert boundary == "\u2581"
    line = prep.text_lines(text)[0]
    tokens = prep.line_to_chars(line, boundary).split()
    assert tokens[5] == "_" and tokens[10] == "\u2581"  # the text's "_", then its space
    assert prep.chars_to_line(prep.line_to_chars(line, boundary), boundary) == line
    with pytest.raises(prep.PrepareError, match="--boundary"):
        prep.choose_boundary("a_b \u2581")
    assert prep.choose_boundary("a_b \u2581", "|") == "|"
    with pytest.raises(prep.PrepareError, match="occurs in the text"):
        prep.choose_boundary("a|b", "|")


def test_ptb_char_format_is_mikolovs() -> None:
    for line, expected in PTB_EXAMPLES.items():
        assert prep.ptb_line_to_chars(line) == expected
        assert prep.chars_to_line(expected) == " ".join(line.split())
    if PTB_TRAIN.is_file():  # the same two lines open the real file
        assert real_lines(PTB_TRAIN, 2) == [line.rstrip("\n") for line in PTB_EXAMPLES]
        for line in real_lines(PTB_TRAIN, 500):
            chars = prep.ptb_line_to_chars(line)
            assert prep.chars_to_line(chars) == " ".join(line.split())
            assert all(len(t) == 1 for t in chars.split())


def test_enwik8_split_sizes() -> None:
    # the reference's sizes on enwik8's 100M bytes: 90M, 5M and 5M
    sizes = {split: len(part) for split, part in
             prep.enwik8_splits(bytes(100_000_000)).items()}
    assert sizes == {"train": 90_000_000, "valid": 5_000_000, "test": 5_000_000}
    data = bytes(range(256)) * 40 + b"tail\n"  # 10,245 synthetic bytes, newlines among them
    parts = prep.enwik8_splits(data, valid_bytes=700, test_bytes=500)
    assert [len(parts[s]) for s in ("train", "valid", "test")] == [len(data) - 1200, 700, 500]
    assert parts["train"] + parts["valid"] + parts["test"] == data
    lines = list(prep.bytes_to_token_lines(parts["test"]))
    assert prep.token_lines_to_bytes(lines) == parts["test"]  # it ends with a newline
    assert sum(len(line.split()) for line in lines) + len(lines) == len(parts["test"])
    with pytest.raises(prep.PrepareError, match="not more than"):
        prep.enwik8_splits(data[:1200], valid_bytes=700, test_bytes=500)


def binarized_lines(dest: Path, split: str) -> list[str]:
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(dest / "dict.txt"))
    dataset = data_utils.load_indexed_dataset(str(dest / split), dictionary)
    return [dictionary.string(dataset[i][:-1]) for i in range(len(dataset))]


def write_ptb(raw: Path) -> Path:
    """A word-level PTB slice (or the two example lines, repeated) as raw/{split}.txt."""
    raw.mkdir()
    words = real_lines(PTB_TRAIN, 200) if PTB_TRAIN.is_file() else [
        line.rstrip("\n") for line in PTB_EXAMPLES] * 20
    for split in ("train", "valid", "test"):
        (raw / f"{split}.txt").write_text("".join(f" {w} \n" for w in words), encoding="utf-8")
    return raw


@pytest.fixture(scope="module")
def char_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """prepare_data.py on character-level inputs, run concurrently: case -> (inputs,
    dest, (returncode, stdout, stderr))."""
    tmp = tmp_path_factory.mktemp("chars")
    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")[:60_000] if TINY_SHAKESPEARE.is_file() \
        else SAMPLE_TEXT * 40
    (tmp / "input.txt").write_text(text, encoding="utf-8")
    mikolov = write_ptb(tmp / "ptb-with-mikolov")
    for split in ("train", "valid", "test"):
        words = (mikolov / f"{split}.txt").read_text(encoding="utf-8")
        chars = [" " + prep.ptb_line_to_chars(line) + " " for line in words.splitlines()]
        if split == "test":
            chars[3] = "x"
        (mikolov / f"ptb.char.{split}.txt").write_text("\n".join(chars) + "\n", encoding="utf-8")
    enwik8 = bytes(range(256)) * 40 + b"tail\n"
    (tmp / "enwik8").write_bytes(enwik8)
    cases = {
        "char": (text, ["--char", str(tmp / "input.txt")]),
        "mikolov": (mikolov, ["--corpus", "ptb-char", "--local", str(mikolov)]),
        "enwik8": (enwik8, ["--corpus", "enwik8", "--local", str(tmp), "--enwik8-heldout-bytes",
                            "600"]),
    }
    procs = {case: subprocess.Popen(
        [sys.executable, str(SCRIPT), *options, "--dest", str(tmp / "out" / case),
         "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for case, (_, options) in cases.items()}
    return {case: (cases[case][0], tmp / "out" / case, proc.communicate(timeout=300),
                   proc.returncode) for case, proc in procs.items()}


def test_char_mode_binarizes_the_text_and_its_tails(char_runs: dict) -> None:
    import json

    text, dest, (stdout, stderr), returncode = char_runs["char"]
    assert returncode == 0, stderr
    lines = prep.text_lines(text)
    n_held = round(len(lines) * 0.05)
    expected = {"train": lines[:len(lines) - 2 * n_held],
                "valid": lines[len(lines) - 2 * n_held:len(lines) - n_held],
                "test": lines[len(lines) - n_held:]}
    info = json.loads((dest / "char-level.json").read_text(encoding="utf-8"))
    assert info["format"] == "characters" and info["boundary"] == "_"
    for split, block in expected.items():
        decoded = [prep.chars_to_line(line, "_") for line in binarized_lines(dest, split)]
        assert decoded == block
        n_chars = sum(len(line) for line in block)
        assert f"{split}: {len(block)} lines, {n_chars} characters" in stdout
    assert "word boundary: '_'" in stdout
    assert not list(dest.parent.glob(".*"))  # no temporary text or binarization left


def test_ptb_char_is_built_from_the_word_level_files(tmp_path: Path) -> None:
    raw = write_ptb(tmp_path / "ptb")
    words, mikolov = prep.ptb_char_sources(raw)
    assert mikolov is None and words == {s: raw / f"{s}.txt" for s in ("train", "valid", "test")}
    files, verdict = prep.prepare_ptb_char(words, None, tmp_path)
    assert verdict is None  # no Mikolov files to compare with
    for split, path in words.items():
        built = files[split].read_text(encoding="utf-8").splitlines()
        expected = path.read_text(encoding="utf-8").splitlines()
        assert built == [prep.ptb_line_to_chars(line) for line in expected]
    # a directory that already holds characters under the word-level names (the reference's
    # data/pennchar) is taken as it is
    for split, path in files.items():
        (raw / f"{split}.txt").write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    assert prep.ptb_char_sources(raw) == (None, words)


def test_ptb_char_checked_against_mikolovs_files(char_runs: dict) -> None:
    raw, dest, (stdout, stderr), returncode = char_runs["mikolov"]
    assert returncode == 0, stderr
    # one line of the test file was changed: reported, and Mikolov's files are binarized
    warning = [line for line in stderr.splitlines() if line.startswith("warning: ptb-char")]
    assert len(warning) == 1 and "test file on 1 lines" in warning[0]
    assert "first at line 4" in warning[0]
    assert binarized_lines(dest, "test")[3] == "x"


def test_ptb_char_agreement_is_reported(tmp_path: Path) -> None:
    words = [line.rstrip("\n") for line in PTB_EXAMPLES]
    built = {s: [prep.ptb_line_to_chars(w) for w in words] for s in ("train", "valid", "test")}
    mikolov = {}
    for split in built:
        mikolov[split] = tmp_path / f"ptb.char.{split}.txt"
        mikolov[split].write_text("".join(f" {c} \n" for c in built[split]), encoding="utf-8")
    verdict = prep.compare_with_mikolov(built, mikolov)
    assert verdict.startswith("ptb-char: the lines built from the word-level PTB agree")


def test_enwik8_splits_are_binarized_one_token_per_byte(char_runs: dict) -> None:
    data, dest, (stdout, stderr), returncode = char_runs["enwik8"]
    assert returncode == 0, stderr
    parts = prep.enwik8_splits(data, 600, 600)
    for split, part in parts.items():
        lines = binarized_lines(dest, split)
        assert prep.token_lines_to_bytes(lines).rstrip(b"\n") == part.rstrip(b"\n")
        newlines = part.count(b"\n")
        n_lines = newlines + (not part.endswith(b"\n"))
        assert f"{split}: {n_lines} lines, {len(part) - newlines} bytes" in stdout


@pytest.mark.parametrize("problem,options,message", [
    ("missing", ["--char", "{tmp}/nothing.txt"], "text file not found"),
    ("empty", ["--char", "{tmp}/empty.txt"], "text file is empty"),
    ("small", ["--char", "{tmp}/small.txt"], "too few to split"),
    ("boundary", ["--char", "{tmp}/both.txt"], "give --boundary"),
    ("misplaced", ["--corpus", "ptb", "--boundary", "|"], "--boundary: not for this corpus"),
    ("enwik8", ["--corpus", "enwik8", "--local", "{tmp}/small.txt",
                "--enwik8-heldout-bytes", "100"], "not more than"),
])
def test_bad_char_input_fails_cleanly(tmp_path: Path, problem: str, options: list,
                                      message: str) -> None:
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    (tmp_path / "small.txt").write_text("one line\ntwo lines\nthree\n", encoding="utf-8")
    (tmp_path / "both.txt").write_text("a_b \u2581\n" * 100, encoding="utf-8")
    dest = tmp_path / "out" / "x"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *[o.format(tmp=tmp_path) for o in options],
         "--dest", str(dest)], capture_output=True, text=True)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
