"""What the commands share: argument types that reject bad values at parse time, a help
formatter that shows defaults, flags derived from a config dataclass, and logging."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, get_args, get_origin, get_type_hints


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


def _csv_text(values: tuple) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type,
                        flag_names: Callable[[str], list[str]]) -> list[dataclasses.Field]:
    """One flag per field of dataclass ``cls`` whose metadata has ``help``; its type and
    default come from the field, ``metavar`` and ``choices`` from the metadata, its option
    strings from ``flag_names(field_name)``. Returns those fields (see
    :func:`dataclass_kwargs`).

    Tuple fields are comma lists, parsed by :func:`dataclass_kwargs` and checked by ``cls``
    (argparse's choices cannot see inside a comma list); bool fields are ``--x/--no-x``
    (``store_true`` when the default is False); ``X | None`` fields take ``X``.
    """
    defaults, hints = cls(), get_type_hints(cls)
    flag_fields = [f for f in dataclasses.fields(cls) if "help" in f.metadata]
    for f in flag_fields:
        value, help_ = getattr(defaults, f.name), f.metadata["help"]
        names, kw = flag_names(f.name), {"dest": f.name, "metavar": f.metadata.get("metavar")}
        if get_origin(hints[f.name]) is tuple:
            choices = f.metadata.get("choices")
            parser.add_argument(*names, default=_csv_text(value), help=help_ + (
                f", from {','.join(choices)}" if choices else ""), **kw)
        elif hints[f.name] is bool:
            action = "store_true" if value is False else argparse.BooleanOptionalAction
            parser.add_argument(*names, dest=f.name, default=value, action=action, help=help_)
        else:
            kind = next(t for t in (get_args(hints[f.name]) or (hints[f.name],))
                        if t is not type(None))
            # "%(default).0s" (empty) where the help says what None means: it stops the
            # formatter from appending "(default: None)".
            parser.add_argument(*names, type=kind, default=value, help=help_ + (
                "%(default).0s" if value is None else ""), **kw)
    return flag_fields


def dataclass_kwargs(parser: argparse.ArgumentParser, args: argparse.Namespace, cls: type,
                     flag_label: Callable[[str], str]) -> dict[str, Any]:
    """The parsed flags of :func:`add_dataclass_flags` as keyword arguments of ``cls``; a
    comma list that does not parse is a usage error naming ``flag_label(field_name)``."""
    hints = get_type_hints(cls)
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
          if "help" in f.metadata}
    for name, text in kw.items():
        if get_origin(hints[name]) is tuple:
            kind = get_args(hints[name])[0]
            try:
                kw[name] = tuple(kind(x.strip()) for x in text.split(",") if x.strip())
            except ValueError:
                parser.error(f"{flag_label(name)}: want comma-separated {kind.__name__}s, got "
                             f"{text!r}")
    return kw
