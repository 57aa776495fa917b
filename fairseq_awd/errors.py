"""One error type for bad input, reported as a single line by fairseq's command-line tools."""

import sys


class FairseqAWDError(ValueError):
    """Bad input or options: the message names the problem and the fix."""


def _excepthook(exc_type, exc, tb, _previous=sys.excepthook):
    if issubclass(exc_type, FairseqAWDError):
        print(f"fairseq_awd: error: {exc}", file=sys.stderr)
        return
    _previous(exc_type, exc, tb)


def install_excepthook() -> None:
    """Print FairseqAWDError as one line instead of a traceback (the exit status stays 1)."""
    if sys.excepthook is not _excepthook:
        sys.excepthook = _excepthook
