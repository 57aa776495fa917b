"""One grid syntax for fairseq-awd-rescore and fairseq-awd-eval (``fairseq_awd.grid``):
``START:STOP:STEP`` or comma-separated values in both, the same one-line refusal of
anything else (NaN and infinities included), and of grids beyond the stated bounds."""

import time

import pytest

from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.grid import (
    MAX_GRID_COMBINATIONS,
    MAX_GRID_POINTS,
    check_grid_combinations,
    parse_grid,
)

BAD = ["nan", "1,nan", "inf", "-inf,0", "0:inf:1", "0:1:nan", "0:1:0", "0:1:-0.5", "1:0:0.5",
       "0:1", "0:1:0.5:2", "x", "", "1,,2"]


def error_of(call) -> str:
    with pytest.raises(FairseqAWDError) as error:
        call()
    return str(error.value)


@pytest.mark.parametrize("spec,values", [
    ("0:1:0.25", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("0.5:0.5:0.1", [0.5]),
    ("-0.2:0.2:0.1", [-0.2, -0.1, 0.0, 0.1, 0.2]),
    ("1e-4:3e-4:1e-4", [1e-4, 2e-4, 3e-4]),
    ("0.5,1", [0.5, 1.0]),
    ("0.3", [0.3]),
    ("0:1:0.6", [0.0, 0.6]),  # never past STOP
    ("0:1:0.4", [0.0, 0.4, 0.8]),
])
def test_ranges_and_lists(spec, values):
    assert parse_grid(spec, "--x") == values


@pytest.mark.parametrize("spec", BAD)
def test_bad_specs_are_refused_naming_the_option_and_the_syntax(spec):
    message = error_of(lambda: parse_grid(spec, "--lm-weight-grid"))
    assert message == (f"--lm-weight-grid: expected finite numbers as START:STOP:STEP (STOP "
                       f"included; STEP > 0, STOP >= START) or comma-separated (a,b,c), got "
                       f"'{spec}'")


@pytest.mark.parametrize("spec,count", [
    ("0:10000:1", "10,001"),
    ("0:1:1e-9", "1,000,000,001"),
    ("0:1:1e-300", "about 1e+300"),
    ("0:1e308:1e-308", "too many"),  # (STOP - START) / STEP overflows
    (",".join(["0.5"] * 10_001), "10,001"),
])
def test_a_grid_beyond_the_bound_is_refused_before_it_is_built(spec, count):
    started = time.perf_counter()
    message = error_of(lambda: parse_grid(spec, "--x"))
    assert time.perf_counter() - started < 0.1
    shown = spec if len(spec) <= 40 else spec[:37] + "..."
    assert message == (f"--x: '{shown}' has {count} values, more than the 10,000 a grid "
                       "may have: give a larger STEP or fewer values")


def test_the_bounds():
    assert len(parse_grid("0:9999:1", "--x")) == MAX_GRID_POINTS == 10_000
    assert len(parse_grid(",".join(["1"] * MAX_GRID_POINTS), "--x")) == MAX_GRID_POINTS
    check_grid_combinations({"--a": [0.0] * 1000, "--b": [0.0] * 100})
    assert MAX_GRID_COMBINATIONS == 100_000
    assert error_of(lambda: check_grid_combinations(
        {"--a": [0.0] * 1000, "--b": [0.0] * 100, "--c": [0.0, 1.0]})) == (
        "the grids make 1,000 (--a) x 100 (--b) x 2 (--c) = 200,000 combinations to try, "
        "more than the 100,000 allowed: use fewer values (a larger STEP) for some of them")


def awd_eval_grids(*options: str) -> dict:
    """fairseq-awd-eval's option check (no data or checkpoint is read)."""
    from fairseq import options as fairseq_options

    from fairseq_awd.evaluation.cli import build_parser, check_options

    args = fairseq_options.parse_args_and_arch(
        build_parser(), ["DATA", "--path", "model.pt", "--cpu", *options])
    return check_options(args)


def test_awd_eval_takes_ranges():
    grids = awd_eval_grids("--cache-window", "5", "--cache-theta", "0.5:1:0.25",
                           "--cache-lambda", "0.1,0.2", "--tune-subset", "valid")
    assert grids == {"cache_theta": [0.5, 0.75, 1.0], "cache_lambda": [0.1, 0.2]}
    grids = awd_eval_grids("--dynamic-eval", "--dynamic-lr", "1e-4:3e-4:1e-4",
                           "--dynamic-decay", "0.02", "--tune-subset", "valid")
    assert grids == {"dynamic_lr": [1e-4, 2e-4, 3e-4], "dynamic_decay": [0.02]}
    assert error_of(lambda: awd_eval_grids("--cache-window", "5", "--cache-lambda", "0:0.2:0.1")
                    ).startswith("more than one value is a grid: give --tune-subset")
    assert error_of(lambda: awd_eval_grids("--cache-window", "5", "--cache-lambda",
                                           "0.1:0.1:0.1", "--tune-subset", "valid")
                    ).startswith("--tune-subset needs a grid")


@pytest.mark.parametrize("spec", ["nan", "0:1:0", "x"])
def test_both_commands_refuse_a_bad_grid_with_the_same_line(spec, tmp_path):
    from fairseq_awd.evaluation.cli import main as awd_eval
    from fairseq_awd.rescoring.cli import main as rescore

    # both fail on the option before reading any file
    eval_error = error_of(lambda: awd_eval(["DATA", "--path", "model.pt", "--cpu",
                                            "--cache-window", "5", "--cache-theta", spec]))
    rescore_error = error_of(lambda: rescore(
        ["--nbest", "test.nbest", "--output", str(tmp_path / "out"), "--lm", "lm.pt",
         "--lm-data", "lm-bin", "--tune-nbest", "dev.nbest", "--lm-weight-grid", spec]))
    expected = error_of(lambda: parse_grid(spec, "OPTION"))
    assert eval_error == expected.replace("OPTION", "--cache-theta")
    assert rescore_error == expected.replace("OPTION", "--lm-weight-grid")
    assert list(tmp_path.iterdir()) == []
