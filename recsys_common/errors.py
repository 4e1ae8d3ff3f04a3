"""User errors and how every command reports them.

A *user error* is a mistake the user can fix without reading our code: a bad flag value, a
malformed input file, an output that would overwrite something. Every command reports one as a
single line ``PROG: error: MESSAGE`` on stderr and exits with :data:`EXIT_USER_ERROR`; the
message names the culprit (file, column, row, flag, value). Anything else is a bug of ours and
keeps its traceback. ``--debug`` (or ``SML_TORCHREC_DEBUG=1``) shows the traceback of user
errors too.

Exit codes: 0 done, 1 internal error (traceback) or a run that failed for a reason outside the
program (a rank was killed; one line), 2 user error, 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
DEBUG_ENV = "SML_TORCHREC_DEBUG"
EXIT_CODES_HELP = (
    "exit codes: 0 done, 1 internal error or a rank was killed, 2 bad arguments or input, "
    "130 interrupted, 143 terminated (SIGTERM). --debug (or SML_TORCHREC_DEBUG=1) adds the "
    "traceback to an error."
)


class UserError(Exception):
    """A mistake in what the user asked for or gave us; reported as one line, exit code 2.

    ``remote_traceback`` holds the formatted traceback when the error was raised in another
    process (a rank); ``--debug`` prints it.
    """

    remote_traceback: str = ""


class DataError(UserError, ValueError):
    """Raised for malformed or inconsistent input data.

    The message starts with the file (or dataset directory) at fault and names the line,
    column, id or value that is wrong, so a user can fix their data without a debugger.
    """

    def __init__(self, path: str | Path | None, message: str) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ConfigError(UserError, ValueError):
    """A configuration value out of range (a ``ValueError`` for programmatic callers); a CLI
    shows it as a usage error naming the flag."""


class RunFailed(Exception):
    """A run stopped for a reason outside the program (a rank was killed, a deadline passed).

    Not a bug to debug from our traceback: one line, exit code 1.
    """


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, so ``except Exception`` on the way out cannot swallow
    it; ``run_command`` reports it in one line and exits 143."""


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """Raise a :class:`UserError` unless ``path`` is, or can be made, a writable directory:
    checked before any work, so that a long run cannot fail at its very end."""
    p = Path(path)
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {p}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {p}: {existing} is not writable")


def refuse_to_replace(path: str | os.PathLike, overwrite: bool, other: str = "--out") -> None:
    """Raise a :class:`UserError` if ``path`` exists and ``overwrite`` was not given.

    The one check every writing command makes, before any work, for an earlier run's output.
    """
    if os.path.lexists(path) and not overwrite:
        raise UserError(
            f"{path} exists (an earlier run's output); pass --overwrite to replace it, "
            f"or choose another {other}"
        )


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"terminated by {signal.Signals(signum).name}")


def debug_requested(argv: list[str] | None = None) -> bool:
    """Whether ``--debug`` is among the arguments or the debug environment variable is set."""
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_command(prog: str, body: Callable[[], int | None], debug: bool = False) -> int:
    """Run a command's ``body`` and turn its outcome into an exit code.

    User errors print one line (plus the traceback when ``debug``); a closed stdout (``| head``)
    ends the command quietly; Ctrl-C exits 130, SIGTERM 143 (the body's ``finally`` blocks run
    first, so a launcher stops its ranks); anything else propagates with its traceback.
    """
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave SIGTERM as it is
        previous = None
    try:
        code = body()
        sys.stdout.flush()
        return EXIT_OK if code is None else int(code)
    except (UserError, RunFailed) as e:
        if debug:
            traceback.print_exc()
            if getattr(e, "remote_traceback", ""):
                print(e.remote_traceback, file=sys.stderr, end="")
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR if isinstance(e, UserError) else EXIT_INTERNAL_ERROR
    except Terminated as e:
        sys.stdout.flush()
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:
        # The reader went away (`| head`): point stdout at devnull so the interpreter's final
        # flush does not raise a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
