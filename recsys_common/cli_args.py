"""What the data-building commands (``sml-data``, ``catn-data``) share: argument types that
reject bad values at parse time, a help formatter that shows defaults, and their logging."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default, except where there is none (None/False) to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        name = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (no nan/inf)."""
    return float(_number(text, float))


def fraction(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    value = float(_number(text, float))
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def one_char(text: str) -> str:
    """argparse type: a field delimiter; ``\\t`` or ``tab`` (what a shell user types) is a tab."""
    if text in ("\\t", "tab", "TAB"):
        return "\t"
    if len(text) != 1:
        raise argparse.ArgumentTypeError(f"must be one character, got {text!r}")
    if text in ('"', "\n", "\r"):
        raise argparse.ArgumentTypeError(f"{text!r} cannot separate fields")
    return text


def path_arg(text: str) -> str:
    """argparse type of a file or directory: not empty (an empty path would mean the working
    directory, which nobody types on purpose)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    if "\0" in text:
        raise argparse.ArgumentTypeError("must not hold a NUL byte")
    return text


class _Formatter(logging.Formatter):
    def __init__(self, prog: str) -> None:
        super().__init__("%(message)s")
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{self.prog}: {record.levelname.lower()}: {text}"
        return text


@contextmanager
def command_logging(prog: str, *loggers: str) -> Iterator[None]:
    """Progress (INFO) of ``loggers`` as plain lines on stderr and warnings as one line
    ``PROG: warning: ...``, for the duration of a command.

    The sources' end-of-read summaries stay quiet: the command prints its own summary on
    stdout, and stderr is kept for progress, warnings and the error line.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(prog))
    saved = []
    for name in loggers:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, lg.propagate))
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    quiet = logging.getLogger("sml_torchrec.data.sources")
    saved_quiet = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        yield
    finally:
        quiet.setLevel(saved_quiet)
        for lg, level, propagate in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
