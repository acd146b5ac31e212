"""``fl-smpc classify --model PATH --messages FILE``: label new messages with a model saved by ``--save-model``.

One message per line in, one label (``spam`` or ``ham``) per line out, in order; a blank line stays a blank
line, so the output lines up with the input. ``--messages -`` reads standard input.
"""

import argparse
import sys

from ..errors import DataError, FlSmpcError

PROG = "fl-smpc classify"


def main(argv) -> int:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Label messages spam or ham with a model saved by `fl-smpc --dataset sms --save-model PATH`.",
    )
    p.add_argument("--model", required=True, metavar="PATH", help="a file written by --save-model (required)")
    p.add_argument(
        "--messages", required=True, metavar="FILE", help="UTF-8 text, one message per line; - for stdin (required)"
    )
    args = p.parse_args(argv)
    try:
        lines = read_lines(args.messages)
        from ..model_file import load_model

        saved = load_model(args.model)
        texts = [line for line in lines if line.strip()]
        labels = iter(saved.classify(texts))
    except FlSmpcError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    for line in lines:
        print(next(labels) if line.strip() else "")
    return 0


def read_lines(path: str):
    """The messages file's lines (standard input for ``-``); a missing or non-UTF-8 file is named."""
    try:
        if path == "-":
            return sys.stdin.read().splitlines()
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except OSError as err:
        raise DataError(f"{path}: cannot read messages: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None
