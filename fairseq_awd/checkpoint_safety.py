"""Checkpoints that survive a kill, a full disk and a second run on the same ``--save-dir``.

fairseq 0.12 writes the first file of a save to ``<name>.tmp`` and renames it, without
fsync, and then copies it onto ``checkpoint_last.pt`` (and ``checkpoint_best.pt``, ...) in
place: a kill during the copy leaves ``checkpoint_last.pt`` empty or cut, and the same
command run again stops instead of resuming. ``install_checkpoint_safety`` wraps fairseq's
save path (looked up at call time, so the wrappers are in force in every command):

- every checkpoint write and copy goes to a temporary file in the same directory, is
  flushed and fsynced, then ``os.replace``\\ d onto its name (and the directory fsynced):
  each ``*.pt`` is complete or absent;
- a write that fails (full disk, size limit, read-only directory) is one FairseqAWDError
  naming the directory; the temporary file is removed, earlier checkpoints are untouched;
- ``fairseq-train`` run again with the same command resumes from the newest readable
  checkpoint when ``checkpoint_last.pt`` is unreadable (one warning names it); an explicit
  ``--restore-file`` that does not exist is refused;
- the rank that writes checkpoints holds a lock in ``--save-dir`` (``fcntl.flock`` on
  ``fairseq_awd.lock``, which names the process) while fairseq's command runs: a second
  training on the same directory is refused; the kernel drops the lock when its process
  dies, so a killed run's lock is taken over (with a warning). ``--no-save`` takes none.
"""

import atexit
import copy
import errno
import fcntl
import functools
import glob
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from typing import BinaryIO, Callable, Dict, List, Optional

import torch
from fairseq import checkpoint_utils
from fairseq.distributed import utils as distributed_utils
from fairseq.file_io import PathManager
from omegaconf import open_dict

from fairseq_awd.checkpoint_compat import checkpoint_updates
from fairseq_awd.errors import FairseqAWDError, find_in_chain

logger = logging.getLogger("fairseq_awd.checkpoint_safety")

LOCK_NAME = "fairseq_awd{}.lock"  # {}: fairseq's checkpoint suffix (shards, model parts)
TEMP_SUFFIX = ".fairseq_awd_tmp"
# Errors of a write that more tries do not mend: the message says which directory to fix.
DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES,
               errno.EPERM, errno.ENOTDIR, errno.EEXIST}


def _os_error(err: BaseException) -> Optional[OSError]:
    """The OSError behind ``err`` (torch.save reports a failed write as a RuntimeError whose
    context is the OSError of ``write``), or None."""
    return find_in_chain(err, lambda e: isinstance(e, OSError) and e.errno is not None)


def write_error(path: str, err: BaseException) -> Optional[FairseqAWDError]:
    """The one-line error for a checkpoint write of ``path`` that failed with ``err`` (a disk
    error: full, too large, read-only, not writable), or None for other errors."""
    os_err = _os_error(err)
    if os_err is None or os_err.errno not in DISK_ERRNOS:
        return None
    directory = os.path.dirname(os.path.abspath(path))
    return FairseqAWDError(
        f"cannot write checkpoint {os.path.basename(path)} in {directory}: "
        f"{os.strerror(os_err.errno)} (errno {os_err.errno}); the checkpoints already there are "
        f"unchanged: free space or make {directory} writable (or give another --save-dir) "
        f"and run the same command again")


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (not every filesystem can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, flush and fsync it, and move it
    onto ``path``: ``path`` is the old file or the whole new one, never a part. A failure
    removes the temporary file; a disk error becomes FairseqAWDError (``write_error``)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        # Not mkstemp: its files are 0600; this one gets the mode (umask) fairseq's had.
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}"
                                      f"{TEMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_directory(directory)
    except Exception as err:
        disk = write_error(path, err)
        if disk is not None:
            raise disk from None
        raise
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _local(path: str) -> bool:
    return not PathManager.path_requires_pathmanager(path)


def atomic_copy(src: str, dst: str) -> None:
    """Copy ``src`` onto ``dst`` through ``atomic_write``."""
    with open(src, "rb") as source:
        atomic_write(dst, lambda f: shutil.copyfileobj(source, f, 16 << 20))


class AtomicCopyPathManager(PathManager):
    """fairseq's PathManager whose ``copy`` of local files is ``atomic_copy``; it replaces
    ``PathManager`` in ``fairseq.checkpoint_utils`` only, where ``save_checkpoint`` copies
    the file it saved onto ``checkpoint_last.pt``, ``checkpoint_best.pt``, ..."""

    _fairseq_awd_wrapped = True

    @staticmethod
    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if not (_local(src_path) and _local(dst_path)):
            return PathManager.copy(src_path, dst_path, overwrite)
        if not overwrite and os.path.exists(dst_path):
            return False
        atomic_copy(src_path, dst_path)
        return True


def _wrap_persistent_save() -> None:
    original = checkpoint_utils.torch_persistent_save
    if getattr(original, "_fairseq_awd_wrapped", False):
        return

    @functools.wraps(original)
    def torch_persistent_save(obj, filename, async_write: bool = False):
        if async_write or not _local(filename):
            return original(obj, filename, async_write=async_write)
        # One try: fairseq's three (2.5 s apart) cannot mend a full disk.
        atomic_write(filename, lambda f: torch.save(obj, f))

    torch_persistent_save._fairseq_awd_wrapped = True
    checkpoint_utils.torch_persistent_save = torch_persistent_save


def _wrap_verify_directory() -> None:
    original = checkpoint_utils.verify_checkpoint_directory
    if getattr(original, "_fairseq_awd_wrapped", False):
        return

    @functools.wraps(original)
    def verify_checkpoint_directory(save_dir: str) -> None:
        # fairseq's probe is one fixed name ("dummy"), which two runs starting together
        # remove under each other; a temporary file of our own is the same test.
        try:
            os.makedirs(save_dir, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=save_dir)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise FairseqAWDError(
                f"--save-dir {os.path.abspath(save_dir)} is not a writable directory "
                f"({err.strerror or err}): give a writable --save-dir") from None

    verify_checkpoint_directory._fairseq_awd_wrapped = True
    checkpoint_utils.verify_checkpoint_directory = verify_checkpoint_directory


# --- the --save-dir lock -------------------------------------------------------------------

_held_locks: Dict[str, int] = {}  # lock path -> open descriptor holding its flock


def _owner(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode("utf-8", "replace").strip()


def lock_save_dir(save_dir: str, suffix: str = "") -> Optional[str]:
    """Take the lock of ``save_dir`` for this process (idempotent) and return its path;
    FairseqAWDError if another live process holds it. The file names the holder (pid, host,
    start time); a file left by a process that is gone is taken over with a warning. None
    (with a warning) where the filesystem has no locks."""
    path = os.path.abspath(os.path.join(save_dir, LOCK_NAME.format(suffix)))
    if path in _held_locks:
        return path
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(fd) or "a process that has not written its name yet"
            os.close(fd)
            raise FairseqAWDError(
                f"--save-dir {os.path.dirname(path)} is in use by another training ({owner}; "
                f"lock file {path}): wait for it to end, or give another --save-dir") from None
        except OSError as err:
            os.close(fd)
            logger.warning(f"cannot lock {path} ({err.strerror}): a second training on this "
                           f"--save-dir would not be refused")
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed the file while we waited: lock the new one
    previous = _owner(fd)
    if previous:
        logger.warning(f"taking over the lock {path} of a run that is no longer running "
                       f"({previous})")
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (f"pid {os.getpid()} on host {socket.gethostname()}, since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode())
    os.fsync(fd)
    _held_locks[path] = fd
    return path


def release_save_dir_locks() -> None:
    """Remove and unlock every ``--save-dir`` lock this process holds."""
    for path, fd in list(_held_locks.items()):
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)
        del _held_locks[path]


def _wrap_call_main() -> None:
    """Hold a save-dir lock while the command's ``main`` runs, not longer: a fairseq command
    run in a long-lived process (tests, notebooks) leaves the directory free when it ends."""
    original = distributed_utils.call_main
    if getattr(original, "_fairseq_awd_wrapped", False):
        return

    @functools.wraps(original)
    def call_main(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        finally:
            release_save_dir_locks()

    call_main._fairseq_awd_wrapped = True
    distributed_utils.call_main = call_main
    atexit.register(release_save_dir_locks)


# --- resuming ------------------------------------------------------------------------------

def _remove_temporary_files(save_dir: str) -> None:
    """Temporary files of writes a kill interrupted (only while this run holds the lock)."""
    for tmp in glob.glob(os.path.join(glob.escape(save_dir), f".*{TEMP_SUFFIX}")):
        try:
            os.unlink(tmp)
            logger.info(f"removed {tmp}, left by a checkpoint write that did not finish")
        except OSError:
            pass


def resume_candidates(save_dir: str, suffix: str = "") -> List[str]:
    """The checkpoints of ``save_dir`` a resume may use instead of ``checkpoint_last``,
    readable ones only (``checkpoint_updates``), the most trained first."""
    last = os.path.join(save_dir, f"checkpoint_last{suffix}.pt")
    found = []
    for path in glob.glob(os.path.join(glob.escape(save_dir), f"checkpoint*{suffix}.pt")):
        if os.path.abspath(path) == os.path.abspath(last):
            continue
        updates = checkpoint_updates(path)
        if updates is not None:
            found.append((updates, os.path.getmtime(path), path))
    return [path for *_, path in sorted(found, reverse=True)]


def _wrap_load_checkpoint() -> None:
    original = checkpoint_utils.load_checkpoint
    if getattr(original, "_fairseq_awd_wrapped", False):
        return

    @functools.wraps(original)
    def load_checkpoint(cfg, trainer, **passthrough_args):
        suffix = trainer.checkpoint_suffix or ""
        if not cfg.no_save and trainer.should_save_checkpoint_on_current_rank:
            os.makedirs(cfg.save_dir, exist_ok=True)
            if lock_save_dir(cfg.save_dir, suffix):
                _remove_temporary_files(cfg.save_dir)
        if cfg.restore_file != "checkpoint_last.pt":
            path = cfg.restore_file.replace(".pt", suffix + ".pt") if suffix else cfg.restore_file
            if not PathManager.isfile(path):
                raise FairseqAWDError(
                    f"--restore-file {path}: no such file; give an existing checkpoint, or "
                    f"leave --restore-file out to resume from --save-dir's checkpoint_last.pt")
            return original(cfg, trainer, **passthrough_args)
        last = os.path.join(cfg.save_dir, f"checkpoint_last{suffix}.pt")
        if not _local(last) or not os.path.exists(last) or checkpoint_updates(last) is not None:
            return original(cfg, trainer, **passthrough_args)
        candidates = resume_candidates(cfg.save_dir, suffix)
        if not candidates:
            return original(cfg, trainer, **passthrough_args)  # its one-line error names it
        chosen = candidates[0]
        logger.warning(f"{last} is unreadable (cut short by a kill or a full disk?): resuming "
                       f"from {chosen}, the most trained readable checkpoint beside it")
        fallback = copy.deepcopy(cfg)
        with open_dict(fallback):
            fallback.restore_file = chosen[:-len(suffix + ".pt")] + ".pt" if suffix else chosen
            fallback.finetune_from_model = None
        return original(fallback, trainer, **passthrough_args)

    load_checkpoint._fairseq_awd_wrapped = True
    checkpoint_utils.load_checkpoint = load_checkpoint


def install_checkpoint_safety() -> None:
    """Wrap fairseq's checkpoint writing and resuming once (idempotent): see the module."""
    _wrap_persistent_save()
    if not getattr(checkpoint_utils.PathManager, "_fairseq_awd_wrapped", False):
        checkpoint_utils.PathManager = AtomicCopyPathManager
    _wrap_verify_directory()
    _wrap_load_checkpoint()
    _wrap_call_main()
