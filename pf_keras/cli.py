"""The one error policy of every pf-keras command line.

A user error (a bad flag value, a file that is missing, hostile, truncated or unwritable, a
full disk) is one line on stderr and exit status 2; a failed check (export validation) is
exit 1 with the report's path; preemption is 143. ``--debug`` (or ``PF_KERAS_DEBUG=1``)
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

USER_ERROR_EXIT = 2
CHECK_FAILED_EXIT = 1
PREEMPTED_EXIT = 143  # 128 + SIGTERM: schedulers restart the job, which then resumes
DEBUG_FLAG = "--debug"
DEBUG_ENV = "PF_KERAS_DEBUG"


class UsageError(ValueError):
    """A command-line flag is missing or malformed (exit 2)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with errors raised as :class:`UsageError` (one line, exit 2 under :func:`run_cli`) instead of
    printing the usage and exiting. Every pf-keras command builds its flags on it."""

    def error(self, message: str):  # argparse's hook for every parse error
        raise UsageError(f"{message} (see {self.prog} --help)")


def one_line(error: BaseException) -> str:
    """``error`` as a single line (messages with newlines are joined)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, ValueError) else f"{type(error).__name__}: {text}"


def op_error_reason(message: str, limit: int = 300) -> str:
    """The cause in a TensorFlow runtime error's message, without its framing ("Graph execution error:",
    "Detected at node ...", ``[[{{node ...}}]]`` lines), on one line of at most ``limit`` characters.

    Example:
        >>> op_error_reason("Graph execution error:\\n\\nDetected at node X defined at (most recent call last):\\n"
        ...                 "<stack traces unavailable>\\ncorrupted record at 12\\n\\t [[{{node X}}]]")
        'corrupted record at 12'
    """
    framing = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[")
    lines = [line.strip() for line in message.splitlines()]
    kept = [line for line in lines if line and not line.startswith(framing)]
    text = " ".join(" ".join(kept or lines).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    except (ValueError, OSError, MemoryError, RecursionError) as error:  # RecursionError: input nested too deep
        if debug:
            traceback.print_exc()
        with contextlib.suppress(OSError):  # stderr on a full device: the exit status still says "user error"
            print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return USER_ERROR_EXIT


def parse_model_kwargs(value: str | Mapping[str, Any] | None, *, key: str = "model_kwargs") -> dict[str, Any]:
    """Builder overrides in the one grammar of every ``--model_kwargs`` flag.

    ``value`` is, in this order: empty/None (no overrides); the path of an existing JSON file
    holding an object; a JSON object (text starting with ``{``); or ``k=v`` pairs separated by
    commas outside brackets, each value read as JSON when it parses (``(1, 2)`` as a list) and
    as a string otherwise. A mapping is returned as a dict.

    Raises:
        ValueError: for text that is none of these, or JSON that is not an object.

    Example:
        >>> parse_model_kwargs('depths=[1,1,1,1],width_mult=0.125,name=tiny')
        {'depths': [1, 1, 1, 1], 'width_mult': 0.125, 'name': 'tiny'}
        >>> parse_model_kwargs('{"classes": 10}')
        {'classes': 10}
    """
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    text = str(value).strip()
    if not text:
        return {}
    source = text
    if os.path.isfile(text):
        try:
            with open(text, encoding="utf-8") as f:
                text = f.read(1 << 20).strip()  # an overrides file is small; a huge one is an error below
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"`{key}` file cannot be read ({error}). Received: {key}={source!r}") from None
        if not text.startswith("{"):
            raise ValueError(f"`{key}` file must hold a JSON object. Received: {key}={source!r}")
    elif text.endswith(".json"):
        raise ValueError(f"`{key}` JSON file does not exist. Received: {key}={source!r}")
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"`{key}` must be a JSON object, k=v pairs or a JSON file ({error}). Received: {key}={source!r}"
            ) from None
        if not isinstance(parsed, dict):
            raise ValueError(f"`{key}` must be a JSON object. Received: {key}={source!r}")
        if {"name", "kwargs"} <= set(parsed):  # a run's model.json of older pf-keras versions
            raise ValueError(f"`{key}` holds a training run's model.json, which is no longer read: pass the run's "
                             f"model folder instead (--model RUN/final; evaluate: --model_dir RUN). "
                             f"Received: {key}={source!r}")
        return parsed
    result: dict[str, Any] = {}
    depth, start, parts = 0, 0, []
    for i, ch in enumerate(text):  # split on commas outside brackets
        depth += ch in "[({"
        depth -= ch in "])}"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    for part in parts:
        name, sep, raw = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(
                f"`{key}` must be a JSON object, k=v pairs (k=v,k2=v2) or a JSON file path. Received: {key}={source!r}"
            )
        raw = raw.strip()
        try:
            result[name.strip()] = json.loads(raw.replace("(", "[").replace(")", "]"))
        except json.JSONDecodeError:
            result[name.strip()] = raw
    return result
