"""Run fairseq's command-line tools on small real text, for the end-to-end tests."""

import contextlib
import importlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import traceback
import warnings
from pathlib import Path
from typing import List, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
USER_DIR = str(REPO / "fairseq_awd")
# ../shared next to the repository, when present: real corpora (data/) and trained
# checkpoints (checkpoints/); tests that need them skip without it.
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
SAMPLE_DATA = REPO / "examples" / "data" / "kjv"

TINY_MODEL = [
    "--arch", "awd_lstm_lm", "--decoder-embed-dim", "24", "--decoder-hidden-size", "40",
    "--decoder-layers", "2",
]
TRAIN_DEFAULTS = [
    "--user-dir", USER_DIR, "--task", "awd_language_modeling", "--criterion", "awd_cross_entropy",
    "--optimizer", "ntasgd", "--lr", "20", "--clip-norm", "0.25", "--batch-size", "4",
    "--bptt", "12", "--valid-batch-size", "4", "--seed", "7", "--cpu", "--no-progress-bar",
    "--log-format", "json", "--log-interval", "1000",
]


def real_text_lines(split: str, n: int) -> List[str]:
    """The first ``n`` lines of a real corpus: PTB from ../shared if present, else the sample."""
    source = SHARED_DATA / "penn" / f"{split}.txt"
    if not source.exists():
        source = SAMPLE_DATA / f"{split}.txt"
    with open(source, encoding="utf-8") as f:
        return [line for _, line in zip(range(n), f)]


def one_thread_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def command(tool: str, args: List[str]) -> List[str]:
    return [sys.executable, "-m", f"fairseq_cli.{tool}", *args]


def run(tool: str, args: List[str], check: bool = True, stdin: Optional[str] = None):
    """Run fairseq's ``fairseq-<tool>`` (``fairseq_cli.<tool>``) with ``args``; see
    ``run_module``."""
    return run_module(f"fairseq_cli.{tool}", args, check, stdin)


def run_module(module: str, args: List[str], check: bool = True, stdin: Optional[str] = None):
    """Run the command ``python -m <module> args`` on one thread; return a
    ``CompletedProcess`` (``returncode``, ``stdout`` with fairseq's log, ``stderr``).

    With ``check`` (the command is expected to succeed and is not itself under test) it
    runs in this process, as fairseq's own ``tests/test_binaries.py`` does, and a failure
    raises AssertionError with its traceback. Without ``check`` it runs as a process of
    its own: exit codes, one-line errors and the absence of tracebacks are what such tests
    check. A call from another thread than the main one runs as a process too (the
    standard streams and ``sys.argv`` are per process); ``FAIRSEQ_AWD_TEST_SUBPROCESS=1``
    runs every command as a process.
    """
    in_process = check and threading.current_thread() is threading.main_thread()
    if in_process and not os.environ.get("FAIRSEQ_AWD_TEST_SUBPROCESS"):
        proc = run_in_process(module, args, stdin)
    else:
        proc = subprocess.run(
            [sys.executable, "-m", module, *args], input=stdin, capture_output=True, text=True,
            env=one_thread_env(), timeout=600,
        )
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def run_in_process(module: str, args: List[str], stdin: Optional[str] = None):
    """``<module>.cli_main()`` with ``sys.argv``, the standard streams and the root logger
    redirected; fairseq's log goes to ``stdout`` in its own format, as from the command."""
    from fairseq import checkpoint_utils

    entry = importlib.import_module(module).cli_main
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s | %(levelname)s | %(name)s | %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    saved = sys.argv, sys.stdin, root.handlers, root.level
    sys.argv = [module, *args]
    sys.stdin = io.StringIO(stdin or "")
    root.handlers, root.level = [handler], logging.INFO
    # fairseq keeps the best validation loss seen on this function between runs.
    checkpoint_utils.save_checkpoint.__dict__.pop("best", None)
    returncode = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                entry()
            except SystemExit as stop:
                if stop.code not in (None, 0):
                    returncode = stop.code if isinstance(stop.code, int) else 1
                    if not isinstance(stop.code, int):
                        print(stop.code, file=err)
            except Exception:  # reported as a process would report it
                traceback.print_exc(file=err)
                returncode = 1
    finally:
        sys.argv, sys.stdin, root.handlers, root.level = saved
    return subprocess.CompletedProcess([sys.executable, "-m", module, *args], returncode,
                                       out.getvalue(), err.getvalue())


def binarize(dest: Path, lines: dict, srcdict: Optional[Path] = None) -> Path:
    """Write ``{split: [lines]}`` as text and binarize it with fairseq-preprocess --only-source."""
    raw = dest.parent / (dest.name + "-raw")
    raw.mkdir(parents=True, exist_ok=True)
    args = ["--only-source", "--destdir", str(dest), "--padding-factor", "1", "--workers", "1"]
    for split, split_lines in lines.items():
        (raw / f"{split}.txt").write_text("".join(split_lines), encoding="utf-8")
        args += [f"--{split}pref", str(raw / f"{split}.txt")]
    if srcdict is not None:
        args += ["--srcdict", str(srcdict)]
    run("preprocess", args)
    shutil.rmtree(raw)
    return dest


def train_args(data: Path, save_dir: Path, extra: List[str]) -> List[str]:
    return [str(data), *TRAIN_DEFAULTS, *TINY_MODEL, "--save-dir", str(save_dir), *extra]


def train(data: Path, save_dir: Path, extra: List[str], check: bool = True):
    return run("train", train_args(data, save_dir, extra), check=check)


def json_logs(stderr_and_stdout: str, tag: str) -> List[dict]:
    """fairseq's ``--log-format json`` records with the given tag ('train', 'valid', ...)."""
    records = []
    for line in stderr_and_stdout.splitlines():
        match = re.search(r"\| " + re.escape(tag) + r" \| (\{.*\})$", line)
        if match:
            records.append(json.loads(match.group(1)))
    return records


def eval_lm_perplexity(output: str) -> float:
    match = re.search(r"Perplexity: ([0-9.]+)", output)
    assert match, output[-2000:]
    return float(match.group(1))


def load_model_state(path: Path) -> dict:
    """The ``model`` weights of a fairseq checkpoint, loaded the way fairseq loads them."""
    from fairseq import checkpoint_utils

    import fairseq_awd  # noqa: F401  (allows fairseq's checkpoint globals)

    return checkpoint_utils.load_checkpoint_to_cpu(str(path))


def assert_same_tensors(a, b, atol: float = 1e-6, key: str = "") -> None:
    """``a`` and ``b`` (tensors, or dicts/lists/tuples of them and of plain values, such as a
    model's state dict) are equal, tensors to ``atol``."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), key
        for name in a:
            assert_same_tensors(a[name], b[name], atol, f"{key}.{name}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), key
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, atol, f"{key}[{i}]")
    elif torch.is_tensor(a):
        assert torch.allclose(a.float(), b.float(), atol=atol, rtol=0), key
    else:
        assert a == b, key


def assert_samples_and_beam_search(data: Path, checkpoint: Path, sampling: List[str] = ()) -> None:
    """``fairseq-interactive`` continues a prompt by sampling (with extra ``sampling``
    options) and returns a 3-best beam sorted by score."""
    common = [str(data), "--user-dir", USER_DIR, "--task", "awd_language_modeling", "--cpu",
              "--path", str(checkpoint), "--max-len-b", "8"]
    proc = run("interactive", [*common, "--sampling", "--sampling-topk", "5", *sampling,
                               "--beam", "1", "--seed", "3", "--min-len", "6"],
               stdin="the company said\n")
    hypos = [line for line in proc.stdout.splitlines() if line.startswith("H-0")]
    assert len(hypos) == 1 and hypos[0].split("\t")[2].startswith("the company said ")
    proc = run("interactive", [*common, "--beam", "3", "--nbest", "3"], stdin="the company\n")
    scores = [float(line.split("\t")[1]) for line in proc.stdout.splitlines()
              if line.startswith("H-0")]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)


def assert_one_line_error(proc, *fragments: str) -> str:
    """A command that failed on bad input: non-zero exit, no traceback, exactly one
    ``fairseq_awd: error:`` line containing every fragment. Returns that line."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("fairseq_awd: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def recipe(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``python scripts/<script> args`` (a recipe: it starts fairseq commands itself)."""
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *args],
                          capture_output=True, text=True, env=one_thread_env(), timeout=1800)


def table_rows(stdout: str) -> dict:
    """``| name | v1 | ... |`` markdown rows of the printed table, name -> cells."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) > 1 and not cells[1].startswith("-"):
            rows[cells[0]] = cells[1:]
    return rows
