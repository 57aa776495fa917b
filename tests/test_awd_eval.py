"""fairseq-awd-eval end to end on real text: plain evaluation equals fairseq-eval-lm, the
cache pointer and dynamic evaluation reduce to it when switched off, bad options fail in
one line."""

import hashlib
import re
import subprocess
import sys

import pytest
from fairseq_cli_helpers import (
    USER_DIR,
    assert_one_line_error,
    binarize,
    one_thread_env,
    real_text_lines,
    run,
    train,
)

ARCHS = {
    "lstm": ["--arch", "awd_lstm_lm"],
    "qrnn": ["--arch", "awd_qrnn_lm"],
    "lstm_adaptive": ["--arch", "awd_lstm_lm", "--adaptive-softmax-cutoff", "300,1000"],
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
    proc = subprocess.run([sys.executable, "-m", "fairseq_awd.evaluation.cli", *args],
                          capture_output=True, text=True, env=one_thread_env(), timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"fairseq-awd-eval failed:\n{proc.stderr[-4000:]}")
    return proc


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
                    "--cache-theta", "0.5,1", "--cache-lambda", "0.1,0.3", "--tune-subset",
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
    (["--cache-window", "5", "--cache-lambda", "x"], ["--cache-lambda: comma-separated"]),
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
