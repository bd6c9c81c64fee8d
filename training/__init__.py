"""ImageNet training of pf_keras models on tf.distribute (scripts: train.py, evaluate.py, benchmark.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any


def cli_main(main: Callable[[Any], int | None], define_flags: Callable[[Any], None],
             argv: Sequence[str] | None = None, *, prog: str) -> int:
    """Parses ``argv`` into fresh absl flags and runs ``main(flag_values)`` under :func:`pf_keras.cli.run_cli`.

    A bad flag value or any user error is one line ``<prog>: error: ...`` on stderr and status 2;
    ``--debug`` (or ``PF_KERAS_DEBUG=1``) shows the traceback. ``--help`` prints the flags.
    """
    from absl import flags

    from pf_keras.cli import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flags.DEFINE_bool("debug", False, "Show the traceback of an error.", flag_values=flag_values)
    if any(a in ("-h", "--help", "--helpfull", "-help") for a in argv):
        print(f"usage: {prog} [flags]\n{flag_values.get_help()}")
        return 0

    def body(args: list[str]) -> int | None:
        try:
            flag_values([prog, *args])
        except flags.Error as error:
            raise ValueError(f"bad command line: {error}") from None
        return main(flag_values)

    return run_cli(body, argv, prog=prog)
