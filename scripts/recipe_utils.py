"""What the end-to-end recipes (multi30k_rescoring.py, ulmfit.py) share: running
fairseq's command-line tools with a thread budget and writing files atomically."""

import json
import os
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.rescoring.cli import write_atomic

T = TypeVar("T")
USER_DIR = str(Path(__file__).resolve().parents[1] / "fairseq_awd")
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_lines(path: Path, lines: Sequence[str]) -> None:
    """Write one line per item through a temporary file, so ``path`` is never half-written."""
    write_atomic(str(path), list(lines))


def run_fairseq(tool: str, args: List[str], threads: int, log: Path,
                resumed: bool = False) -> str:
    """Run ``python -m fairseq_cli.<tool> args`` with ``run_module``."""
    return run_module(f"fairseq_cli.{tool}", args, threads, log, resumed, f"fairseq-{tool}")


def run_module(module: str, args: List[str], threads: int, log: Path, resumed: bool = False,
               name: Optional[str] = None) -> str:
    """Run ``python -m module args`` on ``threads`` threads; its stdout (fairseq's log and
    results) goes to ``log`` as it comes, through ``log.tmp``, renamed at the end. With
    ``resumed`` (a training that resumes from its last checkpoint) ``log.tmp`` is appended
    to, so the log of an interrupted training keeps both parts. Returns the log's text;
    exits with the tool's stderr on failure."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    name = name or module
    print(f"+ {name} {' '.join(args)}", flush=True)
    tmp = log.with_suffix(log.suffix + ".tmp")
    with open(tmp, "a" if resumed else "w", encoding="utf-8") as out:
        proc = subprocess.run([sys.executable, "-m", module, *args],
                              stdout=out, stderr=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    tmp.replace(log)
    return log.read_text(encoding="utf-8")


def preprocess_once(dest: Path, options: List[str], threads: int) -> Path:
    """``fairseq-preprocess --destdir dest`` unless ``dest`` exists, through ``dest.tmp`` so
    that a failed run leaves no half-binarized ``dest``."""
    if not dest.exists():
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        run_fairseq("preprocess", [*options, "--destdir", str(tmp), "--workers", str(threads)],
                    threads, dest.with_name(f"preprocess-{dest.name}.log"))
        tmp.replace(dest)
    return dest


def _by_flag(options: List[str]) -> Dict[str, str]:
    """``["--lr", "0.1", "--cpu"]`` -> ``{"--lr": "--lr 0.1", "--cpu": "--cpu"}``."""
    groups: Dict[str, List[str]] = {}
    flag = ""
    for arg in options:
        if arg.startswith("--"):
            flag = arg
        groups.setdefault(flag, []).append(arg)
    return {flag: " ".join(args) for flag, args in groups.items()}


def train_once(data: Path, save_dir: Path, options: List[str], threads: int) -> Path:
    """``fairseq-train data --save-dir save_dir options`` unless it has finished before (its
    log ``save_dir.log`` is written at the end; an interrupted run resumes from
    ``checkpoint_last.pt``). The options are recorded in ``save_dir.options.json``, and a
    later call with other options is refused rather than given the old model. Returns
    ``save_dir/checkpoint_best.pt``."""
    log, recorded = save_dir.with_suffix(".log"), save_dir.with_suffix(".options.json")
    trained = log.exists() or (save_dir / "checkpoint_last.pt").exists()
    if trained and recorded.exists():
        before = json.loads(recorded.read_text(encoding="utf-8"))
        if before != options:
            was, now = _by_flag(before), _by_flag(options)
            old = " ".join(v for k, v in was.items() if now.get(k) != v) or "(none)"
            new = " ".join(v for k, v in now.items() if was.get(k) != v) or "(none)"
            raise FairseqAWDError(
                f"{save_dir} was trained with other options ({old} -> {new}): use another "
                f"--workdir, or delete {save_dir} and {log} to retrain")
    if not log.exists():
        save_dir.parent.mkdir(parents=True, exist_ok=True)
        write_lines(recorded, [json.dumps(options)])
        run_fairseq("train", [str(data), "--user-dir", USER_DIR, "--save-dir", str(save_dir),
                              "--cpu", "--no-progress-bar", "--log-interval", "50", *options],
                    threads, log, resumed=True)
    return save_dir / "checkpoint_best.pt"


def run_parallel(jobs: Sequence[Callable[[int], T]], threads: int) -> List[T]:
    """Run ``jobs`` side by side, as many at once as there are ``threads`` (at most one per
    job), each called with its share of the threads; return their results in order. The
    first job that raises stops the rest from starting and re-raises here."""
    slots = max(1, min(len(jobs), threads))
    with ThreadPoolExecutor(max_workers=slots) as pool:
        futures = [pool.submit(job, max(1, threads // slots)) for job in jobs]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def mean_sd(values: Sequence[float], digits: int) -> str:
    """``mean +- sd`` (sample standard deviation; 0 for a single value)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} +- {spread:.{digits}f}"


def print_seed_table(name: str, rows: Dict[str, Dict[int, float]], seeds: Sequence[int],
                     digits: int, baseline: Optional[str] = None,
                     notes: Optional[Tuple[str, Dict[str, str]]] = None) -> None:
    """A markdown table: one row per entry of ``rows`` (name -> seed -> value), a column per
    seed, then mean +- sd over the seeds; with ``baseline``, also the per-seed difference to
    that row as mean +- sd; with ``notes`` (header, row -> text), one more column."""
    extra = ([f"vs {baseline}"] if baseline else []) + ([notes[0]] if notes else [])
    print(f"| {name} | " + " | ".join([f"seed {s}" for s in seeds] + ["mean +- sd", *extra]) +
          " |")
    print("| --- |" + " ---: |" * (len(seeds) + 1 + len(extra)))
    for row, by_seed in rows.items():
        cells = [f"{by_seed[s]:.{digits}f}" for s in seeds] + [
            mean_sd([by_seed[s] for s in seeds], digits)]
        if baseline:
            cells.append("" if row == baseline else mean_sd(
                [by_seed[s] - rows[baseline][s] for s in seeds], digits))
        if notes:
            cells.append(notes[1].get(row, ""))
        print(f"| {row} | " + " | ".join(cells) + " |")
