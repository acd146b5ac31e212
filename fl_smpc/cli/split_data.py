"""``fl-smpc split-data``: one CSV per data owner, split exactly like the in-process run."""

import argparse
import sys

from ..config import DEFAULT_WORKERS
from ..errors import FlSmpcError


def main(argv) -> int:
    p = argparse.ArgumentParser(
        prog="fl-smpc split-data", description="Write one CSV per data owner, split like the in-process run."
    )
    p.add_argument("--out", required=True, help="directory for NAME.csv files (required)")
    p.add_argument(
        "--workers", default=",".join(DEFAULT_WORKERS), help="owner names, comma-separated (default: %(default)s)"
    )
    p.add_argument("--csv", help="a CSV (same format) to split instead of the seed's toy data (default: toy data)")
    args = p.parse_args(argv)
    from ..network.csvdata import read_csv, split_to_csv

    try:
        data = read_csv(args.csv) if args.csv else (None, None)
        paths = split_to_csv(args.out, [n.strip() for n in args.workers.split(",")], *data)
    except FlSmpcError as err:
        print(f"fl-smpc split-data: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"fl-smpc split-data: error: cannot write to {args.out}: {err.strerror or err}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
