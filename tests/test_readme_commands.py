"""Every command in README.md's shell blocks is still valid.

The fenced ``bash``/``sh``/``shell`` blocks of README.md (and unlabelled blocks that start
with a known command) are split into commands: backslash continuations joined, comments,
redirections and leading ``VAR=value`` assignments dropped, pipes and ``;``/``&&`` split.
Each command is then checked without running anything heavy:

- ``fairseq-train``, ``fairseq-eval-lm``, ``fairseq-generate``, ``fairseq-interactive``,
  ``fairseq-validate``, ``fairseq-preprocess``: parsed in-process by fairseq's own parser and
  ``options.parse_args_and_arch`` (``fairseq-preprocess``: ``parse_args``, as fairseq does),
  with ``--user-dir fairseq_awd`` pointing at this checkout, so misspelled options,
  architectures, tasks, criteria, optimizers and schedulers fail;
- ``fairseq-awd-eval`` and ``fairseq-awd-rescore``: parsed by their own ``build_parser`` (and
  the eval command's option checks); options must be spelled out, not abbreviated;
- ``python scripts/X.py``: the script exists and every ``--option`` used (up to a ``--``)
  appears in its ``--help``, or in its subcommand's; ``python -m MODULE``: ``--help`` exits 0.
  Both run in-process, so fairseq and torch are imported once;
- ``scripts/recipes/awd.sh RECIPE`` (or ``bash scripts/X.sh``): the script exists, and the
  recipe is one of its ``case`` labels (other scripts: every ``--option`` appears in it);
- ``make TARGET``: the target exists in the Makefile.

Any other command fails the test, so a new kind of command gets a check here first.
"""

import argparse
import contextlib
import functools
import io
import re
import runpy
import shlex
import sys
from pathlib import Path
from typing import Callable, List, NamedTuple

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

SHELL_LANGS = {"bash", "sh", "shell"}
# Commands that need no check beyond existing in any POSIX shell.
HARMLESS = {"echo", "cd", "cp", "mv", "mkdir", "cat", "awk", "head", "tail", "export", "wait"}
OPERATORS = {"|", "||", "&&", ";", "&"}
REDIRECTS = {">", ">>", "<", ">&", "&>"}
OPTION = re.compile(r"^--[A-Za-z0-9][\w-]*")


class Command(NamedTuple):
    line: int  # README line where the command starts
    words: List[str]

    def __str__(self) -> str:
        return f"README.md:{self.line}: {shlex.join(self.words)}"


def shell_blocks(text: str):
    """Yield (first line number, lines) of every shell code block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^\s*```\s*([\w+-]*)\s*$", lines[i])
        if not match:
            i += 1
            continue
        lang, start = match.group(1).lower(), i + 1
        end = start
        while end < len(lines) and not re.match(r"^\s*```\s*$", lines[end]):
            end += 1
        body = lines[start:end]
        first = next((b.split()[0] for b in body if b.strip() and not b.lstrip().startswith("#")),
                     "")
        if lang in SHELL_LANGS or (lang == "" and is_known_command(first)):
            yield start + 1, body
        i = end + 1


def is_known_command(word: str) -> bool:
    return (word.startswith("fairseq-") or word in ("make", "python", "python3", "bash")
            or word.startswith("scripts/"))


def split_commands(first_line: int, body: List[str]) -> List[Command]:
    """Join continuations, tokenize like a shell and split at pipes and separators."""
    commands = []
    logical, start = "", None
    for offset, raw in enumerate(body):
        if start is None:
            start = first_line + offset
        if raw.rstrip().endswith("\\"):
            logical += raw.rstrip()[:-1] + " "
            continue
        logical += raw
        commands.extend(tokenize(logical, start))
        logical, start = "", None
    if logical.strip():
        commands.extend(tokenize(logical, start))
    return commands


def tokenize(line: str, number: int) -> List[Command]:
    line = re.sub(r"(?<=\s)\d?>&\d\b", " ", line)   # 2>&1
    line = re.sub(r"(?<=\s)\d>", " >", line)         # 2> FILE
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words, commands, skip = [], [], False
    for token in lexer:
        if skip:
            skip = False
        elif token in REDIRECTS:
            skip = True
        elif token in OPERATORS:
            commands.append(words)
            words = []
        else:
            words.append(token)
    commands.append(words)
    result = []
    for words in commands:
        while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
            words = words[1:]
        if words:
            result.append(Command(number, words))
    return result


def readme_commands() -> List[Command]:
    commands = []
    for first, body in shell_blocks(README.read_text(encoding="utf-8")):
        commands.extend(split_commands(first, body))
    return commands


def substitute(words: List[str]) -> List[str]:
    """Placeholders that a parser can take: shell variables become 1, and --user-dir
    fairseq_awd is this checkout's plugin."""
    out = []
    for i, word in enumerate(words):
        word = re.sub(r"\$\{?\w+\}?", "1", word)
        if i > 0 and words[i - 1] == "--user-dir" and word.rstrip("/") == "fairseq_awd":
            word = str(REPO / "fairseq_awd")
        out.append(word)
    return out


@contextlib.contextmanager
def parser_errors(command: Command):
    """Turn argparse's exit into a test failure that shows its message."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            yield
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            pytest.fail(f"{command}\n  rejected by the parser: {stderr.getvalue().strip()}")


def fairseq_parser(name: str) -> Callable[[], argparse.ArgumentParser]:
    from fairseq import options

    return {
        "fairseq-train": options.get_training_parser,
        "fairseq-eval-lm": options.get_eval_lm_parser,
        "fairseq-generate": options.get_generation_parser,
        "fairseq-interactive": options.get_interactive_generation_parser,
        "fairseq-validate": options.get_validation_parser,
        "fairseq-preprocess": options.get_preprocessing_parser,
    }[name]


def check_fairseq(command: Command) -> None:
    from fairseq import options

    import fairseq_awd  # noqa: F401  (registers the plugin's names)

    parser = fairseq_parser(command.words[0])()
    args = substitute(command.words[1:])
    with parser_errors(command):
        if command.words[0] == "fairseq-preprocess":
            parser.parse_args(args)  # as fairseq_cli.preprocess does: no task or model options
        else:
            options.parse_args_and_arch(parser, input_args=args)


def check_awd_eval(command: Command) -> None:
    from fairseq import options

    from fairseq_awd.errors import FairseqAWDError
    from fairseq_awd.evaluation import cli

    with parser_errors(command):
        args = options.parse_args_and_arch(cli.build_parser(),
                                           input_args=substitute(command.words[1:]))
    try:
        cli.check_options(args)
    except FairseqAWDError as error:
        pytest.fail(f"{command}\n  refused: {error}")


def check_awd_rescore(command: Command) -> None:
    from fairseq_awd.rescoring import cli

    parser = cli.build_parser()
    check_exact_options(command, set(parser._option_string_actions))
    with parser_errors(command):
        parser.parse_args(substitute(command.words[1:]))


def check_exact_options(command: Command, known) -> None:
    """argparse accepts unambiguous prefixes; the README should spell options out."""
    for word in command.words[1:]:
        match = OPTION.match(word)
        if match and match.group(0) not in known:
            pytest.fail(f"{command}\n  {match.group(0)} is not an option of {command.words[0]}")


@functools.cache
def help_text(*invocation: str) -> str:
    """``python INVOCATION --help``, in-process (fairseq and torch are imported once)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    argv, path = sys.argv[:], sys.path[:]
    code = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            if invocation[0] == "-m":
                sys.argv = [invocation[1], *invocation[2:], "--help"]
                runpy.run_module(invocation[1], run_name="__main__", alter_sys=True)
            else:
                script = str(REPO / invocation[0])
                sys.argv = [script, *invocation[1:], "--help"]
                sys.path.insert(0, str(Path(script).parent))
                runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code or 0
    finally:
        sys.argv, sys.path[:] = argv, path
    if code != 0:
        pytest.fail(f"python {' '.join(invocation)} --help exited {code}:\n"
                    f"{stderr.getvalue()[-2000:]}")
    return stdout.getvalue()


def check_python(command: Command) -> None:
    args = command.words[1:]
    if args[:1] == ["-m"]:
        help_text("-m", args[1])
        return
    script = REPO / args[0]
    if not script.is_file():
        pytest.fail(f"{command}\n  {args[0]} does not exist")
    text = help_text(args[0])
    if len(args) > 1 and re.search(r"\{[\w,-]*\b" + re.escape(args[1]) + r"\b[\w,-]*\}", text):
        text += help_text(args[0], args[1])  # a subcommand: its own options
    for word in args[1:]:
        if word == "--":  # the rest is passed on to another program
            break
        match = OPTION.match(word)
        if match and not re.search(re.escape(match.group(0)) + r"(?![\w-])", text):
            pytest.fail(f"{command}\n  {match.group(0)} is not in {args[0]} --help")


def case_labels(script: Path) -> set:
    labels = set()
    for match in re.finditer(r"^\s*([\w|.-]+)\)", script.read_text(), re.MULTILINE):
        labels.update(match.group(1).split("|"))
    return labels


def check_shell_script(command: Command) -> None:
    words = command.words[1:] if command.words[0] == "bash" else command.words
    script = REPO / words[0]
    if not script.is_file():
        pytest.fail(f"{command}\n  {words[0]} does not exist")
    if script.name == "awd.sh":
        recipe = words[1] if len(words) > 1 else ""
        base = recipe[:-len("-finetune")] if recipe.endswith("-finetune") else recipe
        if base not in case_labels(script) - {"*"}:
            pytest.fail(f"{command}\n  {recipe!r} is not a recipe of {words[0]}")
        return
    text = script.read_text()
    for word in words[1:]:
        match = OPTION.match(word)
        if match and match.group(0) not in text:
            pytest.fail(f"{command}\n  {match.group(0)} is not handled by {words[0]}")


def makefile_targets() -> set:
    text = (REPO / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([\w.-]+)\s*:(?!=)", text, re.MULTILINE)}


def check_make(command: Command) -> None:
    targets = [w for w in command.words[1:] if "=" not in w and not w.startswith("-")]
    missing = [t for t in targets if t not in makefile_targets()]
    if missing:
        pytest.fail(f"{command}\n  no Makefile target {', '.join(missing)}")


def check(command: Command) -> None:
    name = command.words[0]
    if name in ("fairseq-train", "fairseq-eval-lm", "fairseq-generate", "fairseq-interactive",
                "fairseq-validate", "fairseq-preprocess"):
        check_fairseq(command)
    elif name == "fairseq-awd-eval":
        check_awd_eval(command)
    elif name == "fairseq-awd-rescore":
        check_awd_rescore(command)
    elif name in ("python", "python3"):
        check_python(command)
    elif name == "bash" or name.endswith(".sh"):
        check_shell_script(command)
    elif name == "make":
        check_make(command)
    elif name not in HARMLESS:
        pytest.fail(f"{command}\n  no check for {name!r}: add one to {Path(__file__).name}")


COMMANDS = readme_commands()


def test_readme_has_commands():
    names = {c.words[0] for c in COMMANDS}
    assert len(COMMANDS) >= 10, COMMANDS
    assert {"make", "fairseq-train", "fairseq-awd-eval", "fairseq-awd-rescore"} <= names


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"L{c.line}-{c.words[0]}")
def test_readme_command_is_valid(command):
    check(command)


def test_splitting():
    body = ["# a comment",
            "OMP_NUM_THREADS=2 fairseq-train DATA --lr 30 \\",
            "    --arch awd_lstm_lm   # trailing comment",
            'echo "a b" | fairseq-interactive DATA > out.txt 2>&1; make test']
    commands = split_commands(10, body)
    assert [c.words for c in commands] == [
        ["fairseq-train", "DATA", "--lr", "30", "--arch", "awd_lstm_lm"],
        ["echo", "a b"], ["fairseq-interactive", "DATA"], ["make", "test"]]
    assert [c.line for c in commands] == [11, 13, 13, 13]


BAD = [
    "fairseq-train DATA --user-dir fairseq_awd --task awd_language_modeling --arch awd_lstm_lmx",
    "fairseq-train DATA --user-dir fairseq_awd --task awd_language_modeling --arch awd_lstm_lm "
    "--criterion awd_cross_entropyy",
    "fairseq-train DATA --user-dir fairseq_awd --task awd_language_modeling --arch awd_lstm_lm "
    "--optimizer ntasgd --no-such-option 1",
    "fairseq-train DATA --user-dir fairseq_awd --task awd_language_modelling --arch awd_lstm_lm",
    "fairseq-eval-lm DATA --user-dir fairseq_awd --path CKPT --gen-subset test --cache-window 5",
    "fairseq-awd-eval DATA --path CKPT --cache-theta 1",
    "fairseq-awd-eval DATA --path CKPT --no-such-option",
    "fairseq-awd-rescore --lm A --lm-data B --nbest C --output D --lm-weigh 1",
    "python scripts/no_such_script.py --help",
    "python scripts/sample_chars.py --data D --path P --no-such-option 1",
    "python scripts/benchmark_qrnn.py layer --data D",
    "fairseq-preprocess --only-source --trainpref T --destdir D --no-such-option",
    "scripts/recipes/awd.sh lstm-no-such-corpus",
    "bash scripts/no_such.sh",
    "make no-such-target",
    "rm -rf data-bin",
]


@pytest.mark.parametrize("line", BAD, ids=range(len(BAD)))
def test_bad_commands_fail(line):
    (command,) = tokenize(line, 1)
    with pytest.raises(pytest.fail.Exception):
        check(command)
