"""``fl-smpc certs``: make a federation's certificates (a CA, and a key and certificate per party)."""

import sys

from ..config import CERT_DAYS, DEFAULT_WORKERS, MODEL_PARTY
from ..errors import one_line
from .report import BAD_INPUT, OK, ArgumentParser, attempt

PROG = "fl-smpc certs"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Make the certificates for mutual TLS in network mode: ca.pem + ca.key (the federation's "
        "certificate authority) and NAME.pem + NAME.key per party (EC P-256; the party id is the certificate's "
        "CN and DNS name). If DIR already holds ca.pem and ca.key, that CA issues the new parties' certificates.",
        epilog="Give each party ca.pem and its own NAME.pem and NAME.key (keys are written with mode 0600). "
        "Keep ca.key off the workers: whoever holds it can make certificates for any party.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the files (required)")
    p.add_argument(
        "--parties",
        default=",".join((MODEL_PARTY, *DEFAULT_WORKERS)),
        help="party ids, comma-separated: the model owner (its party id, 'model' unless workers and "
        "the run are told --model-party) and every data owner's --id (default: %(default)s)",
    )
    p.add_argument("--days", type=int, default=CERT_DAYS, help="validity in days (default: %(default)s)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace existing files, with a new CA: certificates of parties not listed stop working "
        "(default: refuse to overwrite anything)",
    )
    return p


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    from ..network.tls import create_federation

    parties = [p.strip() for p in args.parties.split(",")]

    def create():
        return create_federation(args.out, parties, args.days, args.force)

    paths, status = attempt(PROG, create, f"to {args.out}", BAD_INPUT)
    if paths is None:
        return status
    if "ca.pem" not in paths:
        print(f"{PROG}: issued by the existing CA in {one_line(args.out)}", file=sys.stderr)
    for path in paths.values():
        print(path)
    return OK
