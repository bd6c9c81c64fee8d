"""The one error policy of every pf-keras command line.

A user error (a bad flag value, a file that is missing, hostile, truncated or unwritable, a
full disk) is one line on stderr and exit status 2; a failed check (export validation) is
exit 1 with the report's path; preemption is 143. ``--debug`` (or ``PF_KERAS_DEBUG=1``)
shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence

USER_ERROR_EXIT = 2
CHECK_FAILED_EXIT = 1
PREEMPTED_EXIT = 143  # 128 + SIGTERM: schedulers restart the job, which then resumes
DEBUG_FLAG = "--debug"
DEBUG_ENV = "PF_KERAS_DEBUG"


def one_line(error: BaseException) -> str:
    """``error`` as a single line (messages with newlines are joined)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, ValueError) else f"{type(error).__name__}: {text}"


def debug_requested(argv: Sequence[str] | None) -> bool:
    """True when ``--debug`` is among ``argv`` or ``$PF_KERAS_DEBUG`` is set to a true value."""
    return DEBUG_FLAG in (argv or ()) or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def run_cli(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, *, prog: str = "") -> int:
    """Runs ``main(argv)`` under the error policy and returns the exit status.

    ``ValueError`` (every pf_keras error type derives from it) and ``OSError`` are user
    errors: one line ``<prog>: error: <message>`` on stderr and status 2, unless debugging
    was requested, in which case the traceback is printed too.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.path.basename(sys.argv[0] or "pf-keras")
    debug = debug_requested(argv)
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, MemoryError) as error:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return USER_ERROR_EXIT
