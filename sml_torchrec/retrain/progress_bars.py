"""Progress bars over periods and epochs (tqdm), shown on rank 0 only.

Bars are on when the run asks for them (``RetrainConfig.progress``, ``--no-progress`` turns
them off), this is rank 0, and stderr is a terminal: a log file or a pipe gets no bar
redraws, only the log lines. Log records go through :class:`TqdmLoggingHandler` so that they
print above a running bar instead of through it.
"""

from __future__ import annotations

import logging
import sys
import threading
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
    if _enabled:
        # tqdm's default lock is a multiprocessing semaphore; a rank stopped by its launcher
        # would leave it behind (and the resource tracker complains at exit). One thread
        # draws the bars, so a thread lock is enough.
        tqdm.set_lock(threading.RLock())


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
    """Writes records to stderr, through ``tqdm.write`` while bars are on so that they do
    not break a bar."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        if not _enabled:
            super().emit(record)
            return
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging must never raise into the run
            self.handleError(record)
