"""`cnnlab <command>`: parse the arguments (cli_parser.py), call the library, and turn its errors into
messages; every command is a function in commands.py or run_commands.py.

Errors a user can cause become one line on stderr: exit code 2 for usage errors, 1 for the rest.
"""

from __future__ import annotations

import os
import sys

from .cli_parser import build_parser
from .errors import CnnlabError, CnnlabWarning
from .names import shown


def _limit_threads(threads) -> None:
    """--threads N, set where the OpenMP and MKL pools read it: before torch is imported (no command has
    imported it yet). Two runs at once, each starting a thread per core, run about 10x slower each."""
    if isinstance(threads, int) and threads > 0:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(threads)


def main(argv: list[str] | None = None) -> int:
    # Whatever the locale, a character the terminal cannot show is written as an escape, never a crash.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    _limit_threads(getattr(args, "threads", None))
    _warnings_as_lines(f"cnnlab {args.command}")
    try:
        code = _command(args.command)(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at exit
        return code
    except BrokenPipeError:  # output piped into `head` and closed: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 0
    except CnnlabError as e:
        message = shown(" ".join(_in_flags(e).split()))  # always exactly one line
        print(f"cnnlab {args.command}: error: {message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"cnnlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from .stopping import Interrupted

        if not isinstance(e, Interrupted):
            raise
        where = f"; continue with: cnnlab train --resume {shown(e.run_dir)}" if e.run_dir else ""
        print(f"cnnlab {args.command}: {e}, checkpoint written{where}", file=sys.stderr)
        return e.exit_code


def _in_flags(error: CnnlabError) -> str:
    """The library's message with the parameters it names written as this CLI's flags (val_split: --val-split)."""
    import re

    from .recipe_flags import flag

    message = str(error)
    for name in error.parameters:
        message = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flag(name), message, count=1)
    return message


def _warnings_as_lines(prefix: str) -> None:
    """Our own warnings (CnnlabWarning) as one line on stderr, like our errors; other warnings as usual."""
    import warnings

    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CnnlabWarning):
            print(f"{prefix}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = one_line


def _command(name: str):
    """cmd_NAME from the module that has it: commands.py (making things) or run_commands.py (using a run)."""
    import importlib

    for module in ("commands", "run_commands"):
        found = getattr(importlib.import_module(f".{module}", __package__), f"cmd_{name.replace('-', '_')}", None)
        if found is not None:
            return found
    raise AssertionError(f"no cmd_{name}")  # a parser without its command: a bug


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
