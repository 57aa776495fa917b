"""fairseq-awd-eval end to end on real text: plain evaluation equals fairseq-eval-lm, the
cache pointer and dynamic evaluation reduce to it when switched off, bad options fail in
one line, and on character-level text the bits per character are the log2-loss per
character."""

import hashlib
import math
import re
import subprocess
import sys

import pytest
from fairseq_cli_helpers import (
    REPO,
    SAMPLE_DATA,
    SHARED_DATA,
    USER_DIR,
    assert_one_line_error,
    binarize,
    one_thread_env,
    real_text_lines,
    run,
    run_module,
    train,
)

pytestmark = pytest.mark.e2e  # runs fairseq's or the plugin's commands

ARCHS = {
    "lstm": ["--arch", "awd_lstm_lm"],
    "qrnn": ["--arch", "awd_qrnn_lm"],
    "lstm_adaptive": ["--arch", "awd_lstm_lm", "--adaptive-softmax-cutoff", "300,1000"],
    "lstm_mos": ["--arch", "awd_lstm_lm", "--mos-components", "3",
                 "--decoder-out-embed-dim", "16"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    lines = {
        "train": real_text_lines("train", 400),
        "valid": real_text_lines("valid", 60),
        "test": real_text_lines("test", 40),
    }
    return binarize(tmp_path_factory.mktemp("awd_eval") / "bin", lines)


@pytest.fixture(scope="module", params=sorted(ARCHS))
def checkpoint(request, data, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp(request.param)
    train(data, save_dir, [*ARCHS[request.param], "--max-epoch", "2", "--no-epoch-checkpoints"])
    return save_dir / "checkpoint_best.pt"


@pytest.fixture(scope="module")
def lstm_checkpoint(data, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("lstm_only")
    train(data, save_dir, [*ARCHS["lstm"], "--max-epoch", "2", "--no-epoch-checkpoints"])
    return save_dir / "checkpoint_best.pt"


def awd_eval(data, checkpoint, *extra: str, check: bool = True):
    args = [str(data), "--path", str(checkpoint), "--cpu", "--valid-batch-size", "1", *extra]
    return run_module("fairseq_awd.evaluation.cli", args, check)


def result_line(proc) -> str:
    lines = re.findall(r"Loss \(base 2\): [0-9.]+, Perplexity: [0-9.]+",
                       proc.stdout + proc.stderr)
    assert lines, (proc.stdout + proc.stderr)[-3000:]
    return lines[-1]


def perplexity(proc) -> float:
    return float(result_line(proc).rsplit(" ", 1)[1])


def test_plain_equals_fairseq_eval_lm_and_the_cache_with_lambda_zero_too(data, checkpoint):
    plain = result_line(awd_eval(data, checkpoint, "--gen-subset", "test"))
    theirs = run("eval_lm", [str(data), "--path", str(checkpoint), "--user-dir", USER_DIR,
                             "--task", "awd_language_modeling", "--cpu", "--gen-subset", "test"])
    assert plain == result_line(theirs)
    off = awd_eval(data, checkpoint, "--gen-subset", "test", "--cache-window", "20",
                   "--cache-lambda", "0")
    assert result_line(off) == plain
    on = awd_eval(data, checkpoint, "--gen-subset", "test", "--cache-window", "20",
                  "--cache-lambda", "0.2")
    assert result_line(on) != plain


def test_cache_carries_across_bptt_windows(data, lstm_checkpoint):
    """The cache spans window boundaries: the result does not depend on --bptt."""
    ppls = [perplexity(awd_eval(data, lstm_checkpoint, "--gen-subset", "test", "--bptt", bptt,
                                "--cache-window", "50", "--cache-lambda", "0.2"))
            for bptt in ("7", "70")]
    assert ppls[0] == pytest.approx(ppls[1], abs=0.011)


def test_grid_is_tuned_on_the_tune_subset_only(data, lstm_checkpoint):
    proc = awd_eval(data, lstm_checkpoint, "--gen-subset", "test", "--cache-window", "30",
                    "--cache-theta", "0.5:1:0.5", "--cache-lambda", "0.1,0.3", "--tune-subset",
                    "valid")
    out = proc.stdout + proc.stderr
    grid = re.findall(r"tune on (\w+): --cache-theta ([0-9.]+), --cache-lambda ([0-9.]+): "
                      r"Perplexity: ([0-9.]+)", out)
    assert len(grid) == 4 and {split for split, *_ in grid} == {"valid"}
    best = min(grid, key=lambda row: float(row[3]))
    assert f"scoring test with --cache-theta {best[1]}, --cache-lambda {best[2]}" in out
    test_ppl = perplexity(awd_eval(data, lstm_checkpoint, "--gen-subset", "test",
                                   "--cache-window", "30", "--cache-theta", best[1],
                                   "--cache-lambda", best[2]))
    assert perplexity(proc) == test_ppl


def test_dynamic_evaluation_with_zero_rate_equals_plain(data, checkpoint):
    plain = result_line(awd_eval(data, checkpoint, "--gen-subset", "test", "--bptt", "5"))
    off = awd_eval(data, checkpoint, "--gen-subset", "test", "--dynamic-eval", "--dynamic-lr",
                   "0", "--dynamic-decay", "0", "--dynamic-stats-max-batches", "20")
    assert result_line(off) == plain


def test_dynamic_evaluation_adapts_and_leaves_the_checkpoint_alone(data, lstm_checkpoint):
    before = hashlib.sha256(lstm_checkpoint.read_bytes()).hexdigest()
    plain = perplexity(awd_eval(data, lstm_checkpoint, "--gen-subset", "test", "--bptt", "5"))
    dynamic = perplexity(awd_eval(data, lstm_checkpoint, "--gen-subset", "test",
                                  "--dynamic-eval", "--dynamic-lr", "3e-4",
                                  "--dynamic-stats-max-batches", "50"))
    assert dynamic < plain
    sgd_off = perplexity(awd_eval(data, lstm_checkpoint, "--gen-subset", "test",
                                  "--dynamic-eval", "--dynamic-sgd", "--dynamic-lr", "0"))
    assert sgd_off == plain
    sgd = perplexity(awd_eval(data, lstm_checkpoint, "--gen-subset", "test", "--dynamic-eval",
                              "--dynamic-sgd", "--dynamic-lr", "1"))
    assert sgd != plain
    assert hashlib.sha256(lstm_checkpoint.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("options,fragments", [
    (["--cache-window", "-1"], ["--cache-window must be 0 (off) or positive"]),
    (["--cache-window", "5", "--cache-lambda", "1.5"], ["--cache-lambda must be in [0, 1]"]),
    (["--cache-window", "5", "--cache-theta", "-1"], ["--cache-theta must be non-negative"]),
    (["--cache-lambda", "0.1"], ["--cache-lambda is a cache option", "--cache-window"]),
    (["--cache-window", "100000"], ["too short for --cache-window 100000"]),
    (["--cache-window", "5", "--cache-lambda", "0.1,0.2"], ["--tune-subset valid"]),
    (["--cache-window", "5", "--cache-lambda", "x"], ["--cache-lambda: expected finite numbers"]),
    (["--dynamic-lr", "1e-4"], ["--dynamic-lr is a dynamic-evaluation option"]),
    (["--dynamic-eval", "--dynamic-lr", "-1"], ["--dynamic-lr must be non-negative"]),
    (["--dynamic-eval", "--dynamic-sgd"], ["--dynamic-lr is required"]),
    (["--dynamic-eval", "--dynamic-bptt", "0"], ["--dynamic-bptt must be positive"]),
    (["--dynamic-eval", "--softmax-batch", "8"], ["--softmax-batch"]),
])
def test_bad_options_are_refused(data, lstm_checkpoint, options, fragments):
    from fairseq_awd.errors import FairseqAWDError
    from fairseq_awd.evaluation.cli import main

    argv = [str(data), "--path", str(lstm_checkpoint), "--cpu", "--gen-subset", "test", *options]
    with pytest.raises(FairseqAWDError) as error:
        main(argv)
    for fragment in fragments:
        assert fragment in str(error.value)


@pytest.mark.parametrize("options,fragments", [
    (["--cache-window", "5", "--cache-lambda", "1.5"], ["--cache-lambda must be in [0, 1]"]),
    (["--cache-window", "100000"], ["too short for --cache-window 100000"]),
])
def test_bad_options_fail_in_one_line(data, lstm_checkpoint, options, fragments):
    proc = awd_eval(data, lstm_checkpoint, "--gen-subset", "test", *options, check=False)
    assert_one_line_error(proc, *fragments)


def test_missing_checkpoint_fails_in_one_line(data, tmp_path):
    proc = awd_eval(data, tmp_path / "nothing.pt", "--gen-subset", "test", check=False)
    assert_one_line_error(proc, "--path: no checkpoint at")


# ---- bits per character ----------------------------------------------------------------------

def char_lines(split: str, n: int):
    """``n`` lines of real text as prepare_data.py's --char mode writes them (one token per
    character, ``_`` for a space): tiny Shakespeare from ../shared if present, else the
    sample."""
    source = SHARED_DATA / "tinyshakespeare" / "input.txt"
    if source.is_file():
        lines = source.read_text(encoding="utf-8").splitlines()
        start = {"train": 0, "valid": 30000, "test": 35000}[split]
        lines = lines[start:start + n]
    else:
        lines = (SAMPLE_DATA / f"{split}.txt").read_text(encoding="utf-8").splitlines()[:n]
    return [" ".join("_" if c == " " else c for c in line) + "\n" for line in lines]


@pytest.fixture(scope="module")
def char_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chars")
    data = binarize(tmp / "bin", {"train": char_lines("train", 300),
                                  "valid": char_lines("valid", 60),
                                  "test": char_lines("test", 40)})
    train(data, tmp / "ckpt", [*ARCHS["lstm"], "--max-update", "15", "--no-epoch-checkpoints",
                               "--disable-validation", "--optimizer", "adam", "--lr", "3e-3"])
    return data, tmp / "ckpt" / "checkpoint_last.pt"


def word_scores(output: str):
    """(token, natural-log probability) of every scored position, from --output-word-probs."""
    scores = []
    for line in output.splitlines():
        match = re.search(r"eval_lm[^0-9]*\d+ (.*)$", line)
        if match and " [" in match.group(1):
            for item in match.group(1).split("\t"):
                token, score = item.rsplit(" [", 1)
                scores.append((token, float(score.rstrip("]"))))
    return scores


def test_bits_per_character_are_the_log2_loss_per_character(char_checkpoint):
    data, checkpoint = char_checkpoint
    proc = awd_eval(data, checkpoint, "--gen-subset", "test", "--output-word-probs")
    out = proc.stdout + proc.stderr
    assert "character-level data (a dictionary of single characters)" in out
    loss = float(re.search(r"Loss \(base 2\): ([0-9.]+)", out).group(1))
    bpc, with_line_ends = map(float, re.search(
        r"bpc ([0-9.]+) \(counting line ends: ([0-9.]+)\)", out).groups())
    scores = word_scores(out)
    characters = [s for token, s in scores if token != "</s>"]
    assert 0 < len(characters) < len(scores)  # line ends are scored too
    assert with_line_ends == loss
    assert -sum(s for _, s in scores) / len(scores) / math.log(2) == pytest.approx(loss, abs=1e-4)
    assert -sum(characters) / len(characters) / math.log(2) == pytest.approx(bpc, abs=1e-4)
    # the same line as fairseq-eval-lm's, and the same numbers under --softmax-batch
    theirs = run("eval_lm", [str(data), "--path", str(checkpoint), "--user-dir", USER_DIR,
                             "--task", "awd_language_modeling", "--cpu", "--gen-subset", "test",
                             "--valid-batch-size", "1"])
    assert result_line(proc) == result_line(theirs)
    from fairseq_awd.evaluation.cli import main

    argv = [str(data), "--path", str(checkpoint), "--cpu", "--gen-subset", "test"]
    chunked = main([*argv, "--softmax-batch", "50"])  # scored in pieces of 50 positions
    assert (round(chunked["bpc"], 4), round(chunked["bpc_with_line_ends"], 4)) == (
        bpc, with_line_ends)
    assert "bpc" not in main([*argv, "--char-level", "off"])


def test_bits_per_character_only_where_asked_on_word_level_data(data, lstm_checkpoint):
    auto = awd_eval(data, lstm_checkpoint, "--gen-subset", "test")
    assert "bpc" not in auto.stdout + auto.stderr
    forced = awd_eval(data, lstm_checkpoint, "--gen-subset", "test", "--char-level", "on")
    assert re.search(r"bpc [0-9.]+ \(counting line ends: [0-9.]+\)", forced.stdout + forced.stderr)


def test_character_level_data_is_recognized(tmp_path):
    from fairseq.data import Dictionary

    from fairseq_awd.evaluation.cli import character_level

    def dictionary(symbols):
        d = Dictionary()
        for symbol in symbols:
            d.add_symbol(symbol)
        return d

    assert character_level(str(tmp_path), dictionary(["a", "b", "_", "<U+0009>"])) is not None
    assert character_level(str(tmp_path), dictionary(["32", "101", "255"])) is not None
    assert character_level(str(tmp_path), dictionary(["the", "a", "<unk>"])) is None
    assert character_level(str(tmp_path), dictionary(["256", "3"])) is None
    (tmp_path / "char-level.json").write_text('{"format": "bytes"}', encoding="utf-8")
    assert "char-level.json" in character_level(str(tmp_path), dictionary(["the"]))


def test_sample_chars_continues_the_prompt(char_checkpoint):
    """scripts/sample_chars.py: the prompt (with a newline), then --length characters drawn
    one at a time, the same for the same seed."""
    data, checkpoint = char_checkpoint
    script = str(REPO / "scripts" / "sample_chars.py")
    prompt = "ROMEO:\nI am"

    def sample(*extra):
        return subprocess.run(
            [sys.executable, script, "--data", str(data), "--path", str(checkpoint), "--prompt",
             prompt, "--length", "40", "--cpu", *extra],
            capture_output=True, text=True, env=one_thread_env(), timeout=300)

    first, again, other = sample("--seed", "1"), sample("--seed", "1"), sample("--seed", "2")
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout == again.stdout != other.stdout
    assert first.stdout.startswith(prompt)
    continuation = first.stdout[len(prompt):]
    assert len(continuation.rstrip("\n")) <= 40 <= len(continuation)  # line ends included
    symbols = {line.split()[0] for line in (data / "dict.txt").read_text().splitlines()}
    assert set(continuation) - {"\n", " "} <= symbols
    in_bf16 = sample("--seed", "1", "--bf16")  # the hub's dtype (tests/test_bf16_scoring.py)
    assert in_bf16.returncode == 0 and in_bf16.stdout.startswith(prompt), in_bf16.stderr[-2000:]
    bad = sample("--length", "0")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "error: --length and --temperature must be positive, --topk non-negative"]
