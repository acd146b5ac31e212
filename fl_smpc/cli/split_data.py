"""``fl-smpc split-data``: one CSV per data owner, split exactly like the in-process run."""

from ..config import DEFAULT_WORKERS
from .report import BAD_INPUT, OK, ArgumentParser, attempt

PROG = "fl-smpc split-data"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Write one CSV per data owner, split like the in-process run.")
    p.add_argument("--out", required=True, help="directory for NAME.csv files (required)")
    p.add_argument(
        "--workers", default=",".join(DEFAULT_WORKERS), help="owner names, comma-separated (default: %(default)s)"
    )
    p.add_argument("--csv", help="a CSV (same format) to split instead of the seed's toy data (default: toy data)")
    return p


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    from ..network.csvdata import read_csv, split_to_csv

    def split():
        data = read_csv(args.csv) if args.csv else (None, None)
        return split_to_csv(args.out, [n.strip() for n in args.workers.split(",")], *data)

    # every error is the input's (the CSV, the names, --out); nothing was written
    paths, status = attempt(PROG, split, f"to {args.out}", BAD_INPUT, "; nothing was written")
    if paths is None:
        return status
    for name, path in paths.items():
        print(f"{name}: {path}")
    return OK
