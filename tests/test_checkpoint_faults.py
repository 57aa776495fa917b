"""Checkpoints under faults, with the faults made for real: SIGKILL at random moments of a
training that saves after every update, a file size limit (the full disk), a save directory
that cannot be made, a second training on a live run's ``--save-dir``, and a checkpoint
whose pickle would run a shell command. After each, every ``*.pt`` in the save directory
loads and the same command resumes; every refusal is one line.

The 50-kill loop is marked ``faults`` (``make test-faults``); the rest runs by default.
"""

import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fairseq_cli_helpers import (
    USER_DIR,
    assert_one_line_error,
    binarize,
    command,
    one_thread_env,
    real_text_lines,
    run_in_process,
    run_module,
    train,
    train_args,
)

pytestmark = pytest.mark.e2e  # runs fairseq's commands

# Saves after every update, forever: what is killed, and run again to resume.
ENDLESS = ["--max-update", "1000000", "--save-interval-updates", "1",
           "--keep-interval-updates", "3", "--no-epoch-checkpoints"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    lines = {"train": real_text_lines("train", 200), "valid": real_text_lines("valid", 30)}
    return binarize(tmp_path_factory.mktemp("faults") / "bin", lines)


def start(args, log: Path, **kwargs) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(command("train", args), stdout=out, stderr=subprocess.STDOUT,
                                env=one_thread_env(), **kwargs)


def loaded_updates(log: Path) -> int:
    """The number of updates of the checkpoint the run logged in ``log`` resumed from."""
    match = re.search(r"Loaded checkpoint \S+ \(epoch \d+ @ (\d+) updates\)", log.read_text())
    assert match, log.read_text()[-3000:]
    return int(match.group(1))


def wait_for(text: str, count: int, proc: subprocess.Popen, log: Path,
             timeout: float = 120) -> None:
    """Wait until ``log`` holds ``text`` more than ``count`` times (the run still alive)."""
    deadline = time.monotonic() + timeout
    while log.read_text().count(text) <= count:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)


def assert_all_checkpoints_load(save_dir: Path) -> dict:
    """Every ``*.pt`` in ``save_dir`` loads with fairseq's reader; returns name -> updates."""
    from fairseq import checkpoint_utils

    import fairseq_awd  # noqa: F401  (fairseq's checkpoint globals)

    found = {}
    for path in sorted(save_dir.glob("*.pt")):
        state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
        found[path.name] = state["optimizer_history"][-1]["num_updates"]
    assert "checkpoint_last.pt" in found, sorted(found)
    return found


def kill_and_resume(data: Path, save_dir: Path, kills: int, seed: int) -> dict:
    """Run the same endless training ``kills`` times, each killed (SIGKILL) at a random
    moment after its first save; after each kill every checkpoint loads, and the next run
    resumes from ``checkpoint_last.pt``. Returns counts for the report."""
    rng = random.Random(seed)
    args = train_args(data, save_dir, ENDLESS)
    stats = {"kills": 0, "mid_write": 0, "resumed": 0}
    expected = 0  # checkpoint_last.pt's updates after the last kill
    for i in range(kills + 1):
        log = save_dir.parent / f"run{i}.log"
        proc = start(args, log)
        try:
            if i:  # a rerun of the same command resumes where the killed one was
                wait_for("Loaded checkpoint", 0, proc, log)
                assert loaded_updates(log) == expected > 0
                stats["resumed"] += 1
                stats["mid_write"] += log.read_text().count("left by a checkpoint write")
            if i == kills:
                break
            wait_for("Saved checkpoint", log.read_text().count("Saved checkpoint"), proc, log)
            time.sleep(rng.uniform(0, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        stats["kills"] += 1
        expected = assert_all_checkpoints_load(save_dir)["checkpoint_last.pt"]
    return stats


def test_killed_runs_leave_readable_checkpoints_and_resume(data, tmp_path):
    stats = kill_and_resume(data, tmp_path / "ckpt", kills=2, seed=1)
    assert stats["kills"] == 2 and stats["resumed"] == 2


@pytest.mark.faults
def test_fifty_kills(data, tmp_path):
    stats = kill_and_resume(data, tmp_path / "ckpt", kills=50, seed=2)
    print(f"checkpoint faults: {stats}")
    assert stats["kills"] == 50 and stats["resumed"] == 50


def test_second_training_on_a_live_save_dir_is_refused(data, tmp_path):
    save_dir = tmp_path / "ckpt"
    log = tmp_path / "first.log"
    first = start(train_args(data, save_dir, ENDLESS), log)
    try:
        wait_for("Saved checkpoint", 0, first, log)
        second = subprocess.run(command("train", train_args(data, save_dir, ENDLESS)),
                                capture_output=True, text=True, env=one_thread_env(),
                                timeout=300)
        assert_one_line_error(second, f"--save-dir {save_dir} is in use by another training",
                              f"pid {first.pid} on host")
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The killed run's lock file is left behind; the next run takes it over and resumes.
    assert f"pid {first.pid}" in (save_dir / "fairseq_awd.lock").read_text()
    proc = train(data, save_dir, ["--max-update", "1", "--no-epoch-checkpoints"])
    assert re.search(r"WARNING .*taking over the lock .*fairseq_awd.lock of a run that is no "
                     rf"longer running \(pid {first.pid} on host", proc.stdout)
    assert not (save_dir / "fairseq_awd.lock").exists()  # released when the run ended


def train_error(data: Path, save_dir: Path, extra) -> str:
    """The FairseqAWDError of a training run in this process (faster than a process of its
    own; the one-line printing of such errors is the commands' excepthook, tested above)."""
    proc = run_in_process("fairseq_cli.train", train_args(data, save_dir, extra))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fairseq_awd.errors.FairseqAWDError: "), proc.stderr[-3000:]
    return last


def _limited_size(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails: EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_full_disk_ends_in_one_line_and_keeps_the_checkpoints(data, tmp_path):
    save_dir = tmp_path / "ckpt"
    train(data, save_dir, ["--max-update", "2", "--no-epoch-checkpoints"])
    before = {p.name: p.read_bytes() for p in save_dir.iterdir()}
    size = min(len(b) for b in before.values())
    proc = subprocess.run(
        command("train", train_args(data, save_dir, ["--max-update", "4",
                                                     "--no-epoch-checkpoints"])),
        capture_output=True, text=True, env=one_thread_env(), timeout=300,
        preexec_fn=_limited_size(size // 2))
    assert_one_line_error(proc, "cannot write checkpoint checkpoint_",
                          f"in {save_dir}: File too large", "unchanged")
    assert {p.name: p.read_bytes() for p in save_dir.iterdir()} == before  # no temp file left


def test_copy_onto_checkpoint_last_is_complete_or_absent(data, tmp_path):
    """fairseq copies the checkpoint it saved onto checkpoint_last.pt; a copy cut short by a
    full disk keeps the old checkpoint_last.pt (without the plugin it is left half
    written)."""
    save_dir = tmp_path / "ckpt"
    train(data, save_dir, ["--max-update", "2", "--no-epoch-checkpoints"])
    last = save_dir / "checkpoint_last.pt"
    big = tmp_path / "big.pt"
    torch.save({"model": {"w": torch.zeros(100_000)}}, big)
    before = last.read_bytes()
    script = (f"import fairseq_awd\nfrom fairseq import checkpoint_utils as c\n"
              f"c.PathManager.copy({str(big)!r}, {str(last)!r}, overwrite=True)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=one_thread_env(), timeout=300,
                          preexec_fn=_limited_size(os.path.getsize(big) // 2))
    assert proc.returncode != 0
    assert "FairseqAWDError: cannot write checkpoint checkpoint_last.pt" in proc.stderr
    assert last.read_bytes() == before
    assert sorted(p.name for p in save_dir.iterdir()) == ["checkpoint_best.pt",
                                                          "checkpoint_last.pt"]


def test_save_dir_that_cannot_be_made(data, tmp_path):
    # A path under a file: refused even as root, where a read-only mode is no obstacle.
    (tmp_path / "file").write_text("")
    save_dir = tmp_path / "file" / "ckpt"
    assert f"--save-dir {save_dir} is not a writable directory" in train_error(
        data, save_dir, ["--max-update", "1"])
    if os.geteuid() != 0:
        read_only = tmp_path / "ro"
        read_only.mkdir(mode=0o555)
        assert f"--save-dir {read_only} is not a writable directory" in train_error(
            data, read_only, ["--max-update", "1"])


def test_resume_falls_back_from_an_unreadable_checkpoint_last(data, tmp_path):
    save_dir = tmp_path / "ckpt"
    train(data, save_dir, ["--max-update", "3", "--save-interval-updates", "1",
                           "--no-epoch-checkpoints"])
    (save_dir / "checkpoint_last.pt").write_bytes(b"")  # what fairseq's copy left after a kill
    for name in ("checkpoint_1_3.pt", "checkpoint_best.pt"):  # cut short
        (save_dir / name).write_bytes((save_dir / name).read_bytes()[:5000])
    proc = train(data, save_dir, ["--max-update", "4", "--save-interval-updates", "1",
                                  "--no-epoch-checkpoints"])
    warnings = [line for line in proc.stdout.splitlines() if "is unreadable" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], proc.stdout[-3000:]
    assert f"resuming from {save_dir / 'checkpoint_1_2.pt'}" in warnings[0]
    assert re.search(r"Loaded checkpoint \S+checkpoint_1_2.pt \(epoch 1 @ 2 updates\)",
                     proc.stdout)


def test_explicit_restore_file(data, tmp_path):
    save_dir = tmp_path / "ckpt"
    missing = tmp_path / "checkpoint_typo.pt"
    assert f"--restore-file {missing}: no such file" in train_error(
        data, save_dir, ["--restore-file", str(missing)])
    train(data, save_dir, ["--max-update", "2", "--no-epoch-checkpoints"])
    cut = tmp_path / "cut.pt"
    cut.write_bytes((save_dir / "checkpoint_last.pt").read_bytes()[:5000])
    line = train_error(data, tmp_path / "other", ["--restore-file", str(cut)])
    assert f"{cut} is not a readable fairseq checkpoint" in line
    assert f"no readable checkpoint in {tmp_path}" in line


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _evil_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil(tmp_path / "marker"), "cfg": None}, path)
    return path


def _assert_refused(message: str, path: Path) -> None:
    assert f"{path}: refused to load: its pickle names posix.system" in message, message
    assert message.count(str(path)) == 1, message  # named once
    assert "weights_only" not in message
    assert not (path.parent / "marker").exists()


@pytest.mark.parametrize("entry", ["train", "eval_lm", "awd_eval"])
def test_malicious_checkpoint_commands(data, tmp_path, entry):
    evil = _evil_checkpoint(tmp_path)
    if entry == "train":
        proc = train(data, tmp_path / "ckpt", ["--restore-file", str(evil)], check=False)
    else:
        module = "fairseq_cli.eval_lm" if entry == "eval_lm" else "fairseq_awd.evaluation.cli"
        proc = run_module(module, [str(data), "--user-dir", USER_DIR, "--task",
                                   "awd_language_modeling", "--path", str(evil), "--cpu"],
                          check=False)
    _assert_refused(assert_one_line_error(proc), evil)
    assert "weights_only" not in proc.stderr


def test_malicious_checkpoint_library_entry_points(data, tmp_path):
    """hub ``from_pretrained`` (also the rescorer's and fusion's loader), fairseq's
    ``load_model_ensemble_and_task`` (fairseq-awd-eval, generate) and the classifier's
    ``--pretrained-lm``: one FairseqAWDError naming the file and the global."""
    from fairseq import checkpoint_utils

    from fairseq_awd import FairseqAWDError, from_pretrained
    from fairseq_awd.models.awd_rnn_classifier import load_lm_checkpoint

    evil = _evil_checkpoint(tmp_path)
    loaders = [lambda: from_pretrained(str(tmp_path), str(data), checkpoint_file="evil.pt"),
               lambda: checkpoint_utils.load_model_ensemble_and_task([str(evil)]),
               lambda: load_lm_checkpoint(str(evil), "awd_lstm_lm")]
    for load in loaders:
        with pytest.raises(FairseqAWDError) as err:
            load()
        _assert_refused(str(err.value), evil)
