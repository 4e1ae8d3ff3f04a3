"""User errors and how every command reports them.

A *user error* is a mistake the user can fix without reading our code: a bad flag value, a
malformed input file, an output that would overwrite something. Every command reports one as a
single line ``PROG: error: MESSAGE`` on stderr and exits with :data:`EXIT_USER_ERROR`; the
message names the culprit (file, column, row, flag, value). Anything else is a bug of ours and
keeps its traceback. ``--debug`` (or ``SML_TORCHREC_DEBUG=1``) shows the traceback of user
errors too.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
DEBUG_ENV = "SML_TORCHREC_DEBUG"


class UserError(Exception):
    """A mistake in what the user asked for or gave us; reported as one line, exit code 2."""


def debug_requested(argv: list[str] | None = None) -> bool:
    """Whether ``--debug`` is among the arguments or the debug environment variable is set."""
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_command(prog: str, body: Callable[[], int | None], debug: bool = False) -> int:
    """Run a command's ``body`` and turn its outcome into an exit code.

    User errors print one line (plus the traceback when ``debug``); a closed stdout (``| head``)
    ends the command quietly; Ctrl-C exits 130; anything else propagates with its traceback.
    """
    try:
        code = body()
        sys.stdout.flush()
        return EXIT_OK if code is None else int(code)
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # The reader went away (`| head`): point stdout at devnull so the interpreter's final
        # flush does not raise a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
