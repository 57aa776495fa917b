"""One error type for bad input, reported as a single line by the command-line tools."""

import os
import re
import sys


class FairseqAWDError(ValueError):
    """Bad input or options: the message names the problem and the fix."""


def _plugin_error(exc: BaseException):
    """The FairseqAWDError that ``exc`` is, or that it was raised from or while handling:
    fairseq re-raises some errors as a plain Exception of its own (e.g. the trainer's
    "Cannot load model parameters from checkpoint")."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, FairseqAWDError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


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


def _excepthook(exc_type, exc, tb, _previous=sys.excepthook):
    plugin_error = _plugin_error(exc)
    message = str(plugin_error) if plugin_error is not None else _missing_task_option(exc)
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
