"""Numbers that are not numbers are refused in one line (issue 32, item 4): the hub's
``score`` of an empty sentence, NaN and infinite n-best scores and weights of the rescorer
and of ``--task translation_lm_fusion``, tuning on the split that is reported, and grids
beyond their bound. Fast: the option checks are called directly, and one process per
command checks the exit status and the single line; the fusion and backward-LM cases that
need trained models are in ``test_shallow_fusion.py``."""

import argparse
import shutil
import time
from pathlib import Path

import pytest
from fairseq_cli_helpers import assert_one_line_error, run_module

from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.grid import check_finite

LEGACY = Path(__file__).parent / "fixtures" / "legacy_checkpoint"
NOT_FINITE = ["nan", "inf", "-inf"]


def error_of(call) -> str:
    with pytest.raises(FairseqAWDError) as error:
        call()
    return str(error.value)


# ---- the hub ---------------------------------------------------------------------------------

def test_hub_score_refuses_an_empty_or_blank_sentence_and_scores_the_others():
    from fairseq_awd import from_pretrained

    lm = from_pretrained(str(LEGACY / "lstm"), str(LEGACY / "data"), "checkpoint.pt")
    for sentence in ["", "   ", " \t\n"]:
        assert error_of(lambda s=sentence: lm.score(s)).startswith(
            "score: the sentence is empty or only whitespace")
    assert error_of(lambda: lm.score(["the", " "])).startswith(
        "score: sentence 1 is empty or only whitespace")
    one, = lm.score(["the company"])
    assert one["positional_scores"].numel() == 2 and bool(one["score"].isfinite())


# ---- the one finiteness check ------------------------------------------------------------------

@pytest.mark.parametrize("value", NOT_FINITE)
def test_check_finite_refuses_nan_and_infinities(value):
    assert error_of(lambda: check_finite(float(value), "--x", "give 1")) == (
        f"--x is {value}, not a finite number: give 1")
    assert check_finite(-1e30, "--x", "give 1") == -1e30


@pytest.mark.parametrize("tag", ["H", "D", "P"])
@pytest.mark.parametrize("value", ["inf", "+inf", "-inf", "nan", "Infinity"])
def test_non_finite_nbest_scores_are_refused_naming_the_line(tmp_path, tag, value):
    from fairseq_awd.rescoring import parse_nbest

    fields = {"H": "-0.5", "D": "-0.5", "P": "-0.1 -0.2 -0.3"}
    fields[tag] = value if tag != "P" else f"-0.1 {value} -0.3"
    path = tmp_path / "x.nbest"
    path.write_text(f"S-0\tein Hund\nH-0\t{fields['H']}\ta dog\nD-0\t{fields['D']}\ta dog\n"
                    f"P-0\t{fields['P']}\n", encoding="utf-8")
    line = {"H": 2, "D": 3, "P": 4}[tag]
    message = error_of(lambda: parse_nbest(str(path)))
    assert message.startswith(f"{path}:{line}: {tag}- line: score is ")
    assert "not a finite number" in message and "generate the n-best list again" in message


# ---- fairseq-awd-rescore ------------------------------------------------------------------------

def rescore_options(tmp_path: Path, *options: str) -> argparse.Namespace:
    from fairseq_awd.rescoring.cli import build_parser

    return build_parser().parse_args(["--nbest", "test.nbest", "--output",
                                      str(tmp_path / "out"), "--lm", "lm.pt", "--lm-data",
                                      "lm-bin", *options])


@pytest.mark.parametrize("option", ["--lm-weight", "--length-weight", "--channel-weight",
                                    "--length-ratio", "--max-unk-rate"])
@pytest.mark.parametrize("value", NOT_FINITE)
def test_rescorer_refuses_non_finite_weights(tmp_path, option, value):
    from fairseq_awd.rescoring.cli import check_options

    extra = [] if option == "--lm-weight" else ["--lm-weight", "1"]
    args = rescore_options(tmp_path, *extra, f"{option}={value}")
    assert error_of(lambda: check_options(args)).startswith(
        f"{option} is {value}, not a finite number: give ")


def test_rescorer_refuses_tuning_on_the_list_it_reranks(tmp_path):
    from fairseq_awd.rescoring import parse_nbest
    from fairseq_awd.rescoring.cli import check_distinct_tuning_set, check_options

    nbest = tmp_path / "test.nbest"
    nbest.write_text("S-0\tein Hund\nH-0\t-0.5\ta dog\nH-0\t-0.7\tthe dog\n", encoding="utf-8")
    (tmp_path / "link.nbest").symlink_to(nbest)
    for dev in (nbest, tmp_path / "link.nbest"):
        args = rescore_options(tmp_path, "--tune-nbest", str(dev))
        args.nbest = str(nbest)
        assert error_of(lambda a=args: check_options(a)).startswith(
            f"--tune-nbest and --nbest are the same n-best list ({dev})")
    copy = tmp_path / "copy.nbest"
    shutil.copy(nbest, copy)
    lists = parse_nbest(str(nbest))
    message = error_of(lambda: check_distinct_tuning_set(
        lists, parse_nbest(str(copy)), str(nbest), str(copy)))
    assert f"same n-best list ({copy} has the sources and hypotheses of {nbest})" in message
    other = tmp_path / "dev.nbest"
    other.write_text("S-0\tein Hund\nH-0\t-0.5\ta dog\nH-0\t-0.7\ta hound\n", encoding="utf-8")
    check_distinct_tuning_set(lists, parse_nbest(str(other)), str(nbest), str(other))


def test_rescorer_refuses_too_many_grid_combinations_before_reading_a_file(tmp_path):
    from fairseq_awd.rescoring.cli import main

    started = time.perf_counter()
    message = error_of(lambda: main(
        ["--nbest", "test.nbest", "--output", str(tmp_path / "out"), "--lm", "lm.pt",
         "--lm-data", "lm-bin", "--tune-nbest", "dev.nbest", "--lm-weight-grid", "0:5:0.001"]))
    assert message.startswith("the grids make 5,001 (--lm-weight-grid) x 21 "
                              "(--length-weight-grid) = 105,021 combinations to try, more "
                              "than the 100,000 allowed")
    assert time.perf_counter() - started < 1.0
    assert list(tmp_path.iterdir()) == []


def test_rescorer_command_refuses_an_infinite_score_in_one_line(tmp_path):
    nbest = tmp_path / "test.nbest"
    nbest.write_text("S-0\tein Hund\nH-0\t-0.5\ta dog\nD-0\t-0.5\ta dog\n"
                     "H-0\tinf\tthe cat\nD-0\tinf\tthe cat\n", encoding="utf-8")
    out = tmp_path / "out.en"
    proc = run_module("fairseq_awd.rescoring.cli", [
        "--nbest", str(nbest), "--output", str(out), "--lm-weight", "0.5",
        "--lm", "lm.pt", "--lm-data", "lm-bin"], check=False)
    assert proc.returncode == 1
    assert_one_line_error(proc, f"{nbest}:4: H- line: score is inf, not a finite number")
    assert not out.exists()


# ---- fairseq-awd-eval ---------------------------------------------------------------------------

def awd_eval_options(*options: str) -> argparse.Namespace:
    from fairseq import options as fairseq_options

    from fairseq_awd.evaluation.cli import build_parser

    return fairseq_options.parse_args_and_arch(
        build_parser(), ["DATA", "--path", "model.pt", "--cpu", *options])


@pytest.mark.parametrize("options,message", [
    (["--cache-window", "5", "--cache-lambda", "0.1,0.2", "--tune-subset", "valid",
      "--gen-subset", "valid"], "--tune-subset valid is the --gen-subset: "),
    (["--dynamic-eval", "--dynamic-epsilon", "nan"],
     "--dynamic-epsilon is nan, not a finite number: give a small positive number"),
    (["--cache-window", "5", "--cache-theta", "0:99:0.01", "--cache-lambda", "0:1:0.01",
      "--tune-subset", "valid"],
     "the grids make 9,901 (--cache-theta) x 101 (--cache-lambda) = 1,000,001 combinations"),
])
def test_awd_eval_refuses_tuning_on_the_reported_split_and_non_finite_options(options,
                                                                              message):
    from fairseq_awd.evaluation.cli import check_options

    assert error_of(lambda: check_options(awd_eval_options(*options))).startswith(message)


def test_awd_eval_tunes_on_another_split():
    from fairseq_awd.evaluation.cli import check_options

    grids = check_options(awd_eval_options("--cache-window", "5", "--cache-lambda", "0.1,0.2",
                                           "--tune-subset", "valid", "--gen-subset", "test"))
    assert grids["cache_lambda"] == [0.1, 0.2]


def test_awd_eval_command_refuses_tuning_on_the_reported_split_in_one_line():
    proc = run_module("fairseq_awd.evaluation.cli", [
        "DATA", "--path", "model.pt", "--cpu", "--cache-window", "5", "--cache-lambda",
        "0.1,0.2", "--tune-subset", "valid", "--gen-subset", "valid"], check=False)
    assert proc.returncode == 1
    assert_one_line_error(proc, "--tune-subset valid is the --gen-subset", "tune on another")


# ---- --task translation_lm_fusion ---------------------------------------------------------------

@pytest.fixture(scope="module")
def fusion_task():
    from fairseq.data import Dictionary
    from fairseq.tasks.translation import TranslationConfig

    from fairseq_awd.tasks.translation_lm_fusion import TranslationLMFusionTask

    dictionary = Dictionary()
    return TranslationLMFusionTask(TranslationConfig(data="DATA"), dictionary, dictionary)


@pytest.mark.parametrize("option", ["lm_weight", "lenpen", "unkpen"])
@pytest.mark.parametrize("value", NOT_FINITE)
def test_fusion_refuses_non_finite_weights(fusion_task, option, value):
    args = argparse.Namespace(lm_weight=0.5, lenpen=1.0, unkpen=0.0)
    setattr(args, option, float(value))
    flag = f"--{option.replace('_', '-')}"
    assert error_of(lambda: fusion_task.build_generator([], args)).startswith(
        f"{flag} is {value}, not a finite number: give a finite number, e.g. {flag} ")


def test_one_backward_lm_check():
    """The rescorer and fusion refuse a backward LM with the same function (its message is
    checked through both commands in test_shallow_fusion.py)."""
    from fairseq_awd.rescoring import lm_scorer
    from fairseq_awd.tasks import translation_lm_fusion

    assert translation_lm_fusion.check_forward_lm is lm_scorer.check_forward_lm
    check = lm_scorer.check_forward_lm
    check(argparse.Namespace(reverse_tokens=False), "--lm x.pt")
    check(argparse.Namespace(), "--lm old.pt")  # older checkpoints have no such option
    assert error_of(lambda: check(argparse.Namespace(reverse_tokens=True), "--lm x.pt")
                    ).startswith("--lm x.pt is a backward LM (trained with --reverse-tokens)")
