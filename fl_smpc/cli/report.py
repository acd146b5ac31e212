"""What every ``fl-smpc`` command shares: its errors are one line, and their exit status says whose fault.

0: done. 2: bad input, i.e. a flag, or a file given on the command line (a data file, a checkpoint to
resume, certificates, an output path) that cannot be used. 1: a run that started failed (a round, a
worker, a checkpoint that could not be written after a round).
"""

import argparse
import sys
from typing import NoReturn

from ..errors import FlSmpcError, one_line

OK, FAILED, BAD_INPUT = 0, 1, 2


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
