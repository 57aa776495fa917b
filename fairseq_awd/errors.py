"""One error type for bad input, reported as a single line by the command-line tools."""

import os
import sys


class FairseqAWDError(ValueError):
    """Bad input or options: the message names the problem and the fix."""


def _excepthook(exc_type, exc, tb, _previous=sys.excepthook):
    if issubclass(exc_type, FairseqAWDError):
        print(f"fairseq_awd: error: {exc}", file=sys.stderr)
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
