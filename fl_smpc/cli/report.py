"""What every ``fl-smpc`` command shares: its errors are one line, and their exit status says whose fault.

0: done. 2: bad input, i.e. a flag, or a file given on the command line (a data file, a checkpoint to
resume, certificates, an output path) that cannot be used. 1: a run that started failed (a round, a
worker, a checkpoint that could not be written after a round).
"""

import argparse
import sys
from typing import Callable, NoReturn, Optional, Tuple, TypeVar

from ..errors import FlSmpcError, one_line

OK, FAILED, BAD_INPUT = 0, 1, 2
T = TypeVar("T")


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser (usage, then ``prog: error: message``, exit 2), its message on one line whatever it quotes."""

    def error(self, message: str) -> NoReturn:
        super().error(one_line(message))


def exit_status(err: FlSmpcError) -> int:
    """2 when the user's input is at fault, 1 for a run that failed."""
    return BAD_INPUT if err.bad_input else FAILED


def report(prog: str, message) -> None:
    """``prog: error: message`` on stderr, on one line (an FlSmpcError's own text is one line already)."""
    text = str(message) if isinstance(message, FlSmpcError) else one_line(str(message))
    print(f"{prog}: error: {text}", file=sys.stderr)


def fail(prog: str, err: FlSmpcError) -> int:
    """Report ``err`` and return its exit status."""
    report(prog, err)
    return exit_status(err)


def attempt(prog: str, write: Callable[[], T], target: str, status: int, note: str = "") -> Tuple[Optional[T], int]:
    """``(write(), OK)``; or, when it raises an FlSmpcError or an OSError, report it and return ``(None, status)``.

    An OSError is reported as ``cannot write TARGET: why`` (plus ``note``): its own text may name a temporary file.
    """
    try:
        return write(), OK
    except FlSmpcError as err:
        report(prog, err)
    except OSError as err:
        report(prog, f"cannot write {target}: {err.strerror or err}{note}")
    return None, status
