"""One error type for bad input, reported as a single line by the command-line tools."""

import os
import re
import sys
import traceback
from typing import Callable, Optional, Tuple


class FairseqAWDError(ValueError):
    """Bad input or options: the message names the problem and the fix."""


def find_in_chain(exc: Optional[BaseException],
                  match: Callable[[BaseException], bool]) -> Optional[BaseException]:
    """The first exception of ``exc``'s chain (``exc``, then what it was raised from or
    while handling, and so on) for which ``match`` is true, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if match(exc):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _plugin_error(exc: BaseException):
    """The FairseqAWDError that ``exc`` is, or that it was raised from or while handling:
    fairseq re-raises some errors as a plain Exception of its own (e.g. the trainer's
    "Cannot load model parameters from checkpoint")."""
    return find_in_chain(exc, lambda e: isinstance(e, FairseqAWDError))


def _option_value(option: str) -> str:
    argv = sys.argv
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return "?"


def _missing_task_option(exc: BaseException) -> str:
    """One line for omegaconf's "Interpolation key 'task.X' not found": fairseq resolves the
    options an architecture reads from its task (``--arch transformer_lm`` reads
    ``task.max_target_positions``) before any task code runs, so a model of another task
    fails there; "" for any other error."""
    try:
        from omegaconf.errors import InterpolationKeyError
    except ImportError:  # pragma: no cover - omegaconf comes with fairseq
        return ""
    if not isinstance(exc, InterpolationKeyError):
        return ""
    match = re.search(r"Interpolation key 'task\.(\w+)' not found", str(exc))
    if not match:
        return ""
    return (f"--arch {_option_value('--arch')} reads the task option {match.group(1)}, which "
            f"--task {_option_value('--task')} does not have: the architecture belongs to "
            "another task; give one of this task's architectures (awd_language_modeling: "
            "awd_lstm_lm*, awd_qrnn_lm*; awd_sentence_prediction: awd_*_classifier)")


def _undecodable_line(path: str) -> Optional[Tuple[int, int]]:
    """``(line, byte offset)`` of the first line of ``path`` that is not UTF-8, or None."""
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return number, offset + err.start
            offset += len(raw)
    return None


def _not_utf8_input(exc: BaseException) -> str:
    """One line for fairseq-preprocess given text that is not UTF-8, naming the first such
    file and line: fairseq's line reader fails on it with "negative seek position -1" (it
    steps back one byte per undecodable byte) or a UnicodeDecodeError; "" otherwise."""
    files = [f.f_code.co_filename for f, _ in traceback.walk_tb(exc.__traceback__)]
    if not (isinstance(exc, UnicodeDecodeError) or str(exc) == "negative seek position -1"
            or any(name.endswith("file_chunker_utils.py") for name in files)):
        return ""
    languages = [_option_value(o) for o in ("--source-lang", "--target-lang")]
    for option in ("--trainpref", "--validpref", "--testpref"):
        for prefix in _option_value(option).split(","):
            for path in [prefix] + [f"{prefix}.{lang}" for lang in languages if lang != "?"]:
                where = _undecodable_line(path) if os.path.isfile(path) else None
                if where:
                    return (f"{path} is not UTF-8 text (line {where[0]}, byte {where[1]}), and "
                            "fairseq-preprocess reads UTF-8: convert it first, e.g. "
                            f"iconv -f LATIN1 -t UTF-8 {path} > {path}.utf8")
    return ""


def _excepthook(exc_type, exc, tb, _previous=sys.excepthook):
    plugin_error = _plugin_error(exc)
    message = (str(plugin_error) if plugin_error is not None
               else _missing_task_option(exc) or _not_utf8_input(exc))
    if message:
        print(f"fairseq_awd: error: {message}", file=sys.stderr)
        return
    _previous(exc_type, exc, tb)


def running_a_command() -> bool:
    """Whether this process is one of fairseq's commands or the plugin's (``fairseq-train``,
    ``python -m fairseq_cli.eval_lm``, ``fairseq-awd-rescore``, ...), not a library user's."""
    argv = getattr(sys, "orig_argv", sys.argv)
    if "-m" in argv[:-1]:  # python -m fairseq_cli.train: __main__ is not set up yet
        return argv[argv.index("-m") + 1].split(".")[0] in ("fairseq_cli", "fairseq_awd")
    return os.path.basename(sys.argv[0] if sys.argv else "").startswith("fairseq-")


def install_excepthook() -> None:
    """Print FairseqAWDError as one line instead of a traceback (the exit status stays 1)."""
    if sys.excepthook is not _excepthook:
        sys.excepthook = _excepthook
