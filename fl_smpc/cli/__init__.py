"""The ``fl-smpc`` command: argv dispatch to the training run or a subcommand.

Each command module parses its flags, builds what the package needs (a RunSpec, a file list...),
calls the package and prints. Errors derive from :class:`fl_smpc.errors.FlSmpcError`: one ``except``
each, exit 2 for bad flags or files given on the command line, 1 for a run that fails.
"""

import os
import sys
from importlib import import_module

BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command whose reader closed the pipe

# subcommand -> module under fl_smpc.cli, loaded only when used
SUBCOMMANDS = {
    "worker": "worker",
    "demo-network": "demo",
    "split-data": "split_data",
    "certs": "certs",
    "classify": "classify",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return import_module(f".{SUBCOMMANDS[argv[0]]}", __name__).main(argv[1:])
        from .train import main as train_main

        return train_main(argv)
    except BrokenPipeError:  # `fl-smpc ... | head`: the reader has gone; stop quietly, as other commands do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush of stdout must not fail again
        return BROKEN_PIPE
