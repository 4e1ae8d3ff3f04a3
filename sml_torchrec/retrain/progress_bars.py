"""Progress bars over periods and epochs (tqdm), shown on rank 0 only.

Bars are on when the run asks for them (``RetrainConfig.progress``, ``--no-progress`` turns
them off), this is rank 0, and stderr is a terminal: a log file or a pipe gets no bar
redraws, only the log lines. Log records go through :class:`TqdmLoggingHandler` so that they
print above a running bar instead of through it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

from recsys_common.process_group import rank_world

T = TypeVar("T")
_enabled = False


def configure(enabled: bool) -> None:
    """Turn the bars on for this process if ``enabled``, it is rank 0 and stderr is a tty."""
    global _enabled
    _enabled = bool(enabled) and rank_world()[0] == 0 and sys.stderr.isatty()


def enabled() -> bool:
    return _enabled


def bar(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """``iterable``, with a bar that disappears when done if bars are on."""
    if not _enabled:
        yield from iterable
        return
    yield from tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True,
                    file=sys.stderr)


class TqdmLoggingHandler(logging.StreamHandler):
    """Writes records to stderr through ``tqdm.write``, so they do not break a bar."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise into the run
            self.handleError(record)
