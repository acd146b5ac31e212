"""``fl-smpc worker``: serve one data owner's CSV over syft's websockets until SIGINT/SIGTERM."""

import argparse

from ..config import (
    MIN_OWNERS,
    MODEL_PARTY,
    PEER_TIMEOUT,
    SECURITY_CHOICE,
    WORKER_HOST,
    WORKER_PORT,
    check_party,
    check_port,
    check_positive_float,
    parse_addresses,
)
from ..errors import FlSmpcError
from .report import BAD_INPUT, FAILED, OK, ArgumentParser, report


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="fl-smpc worker",
        description="Serve one data owner: load its CSV (header row; numeric features; last column a 0/1 "
        "label), tag it for the model owner's search, and answer syft websocket requests until SIGINT/SIGTERM.",
    )
    p.add_argument("--id", required=True, help="this owner's worker id, e.g. bob (required)")
    p.add_argument("--data", required=True, help="this owner's CSV file (required)")
    p.add_argument("--host", default=WORKER_HOST, help="address to bind (default: %(default)s)")
    p.add_argument(
        "--port", type=int, default=WORKER_PORT, help="port to bind, 1-65535; 0 picks a free one (default: %(default)s)"
    )
    p.add_argument("--peers", default="", help="the other owners, NAME=HOST:PORT,... (required: at least one)")
    p.add_argument(
        "--timeout",
        type=float,
        default=PEER_TIMEOUT,
        help="seconds to keep trying to reach a peer, and to wait for its reply; keep it below the "
        "model owner's --timeout so a dead peer is named (default: %(default)s)",
    )
    p.add_argument(
        "--certs",
        metavar="DIR",
        help="mutual TLS: DIR holds ca.pem, ID.pem and ID.key; only the model "
        "owner and the --peers may connect (one of --certs / --insecure is required)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="plain ws:// without authentication; only if --host and every peer are loopback addresses",
    )
    p.add_argument(
        "--model-party",
        default=MODEL_PARTY,
        metavar="NAME",
        help="the model owner's party id (its certificate's name) (default: %(default)s)",
    )
    p.add_argument(
        "--min-owners",
        type=int,
        default=MIN_OWNERS,
        help="release this owner's share of a sum only if the sum covers at least this many owners, "
        "and share private values among at least this many (default: %(default)s; see docs/policy.md)",
    )
    p.add_argument(
        "--max-release",
        type=int,
        metavar="N",
        help="release at most N values in one sum (the model's parameter count) (default: a linear "
        "model's, features + 1)",
    )
    p.add_argument(
        "--allow-command",
        action="append",
        default=[],
        metavar="NAME",
        help="allow the syft worker command NAME (e.g. objects_count for diagnostics); repeatable; "
        "none is allowed by default",
    )
    p.add_argument("--unsafe-no-policy", action="store_true", help=argparse.SUPPRESS)  # tests: syft's behaviour
    return p


def main(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.certs is None) == (not args.insecure):
        parser.error(
            ("--certs and --insecure exclude each other: " if args.insecure else "no security chosen: ")
            + SECURITY_CHOICE
        )
    try:
        check_port(args.port)
        check_party(args.model_party)
        check_positive_float("timeout", args.timeout, maximum=24 * 3600.0)
        peers = parse_addresses(args.peers) if args.peers.strip() else {}
    except FlSmpcError as err:
        parser.error(str(err))
    try:
        from ..network.policy import PolicySettings
        from ..network.server import create_data_owner

        if args.max_release is not None and args.max_release < 1:
            parser.error(f"--max-release: must be a positive integer, got {args.max_release}")
        policy = (
            None
            if args.unsafe_no_policy
            else PolicySettings(
                min_owners=args.min_owners,
                max_release=args.max_release,
                worker_commands=frozenset(args.allow_command),
            )
        )
        server = create_data_owner(
            args.id,
            args.data,
            args.host,
            args.port,
            peers,
            args.timeout,
            args.certs,
            args.model_party,
            policy,
            log=lambda line: print(f"fl-smpc worker {args.id}: {line}", flush=True),
        )
    except FlSmpcError as err:  # the data file, the certificates, a setting
        report("fl-smpc worker", err)
        return BAD_INPUT
    rows, features = server.owner_tensors()[0].shape
    started = server.fingerprint()
    rules = (
        "NO release policy (syft's behaviour)"
        if policy is None
        else (f"release policy: sums over >= {policy.min_owners} owners, {policy.scalars_per_round} scalars per round")
    )
    if args.certs:
        scheme, security = "wss", f"mutual TLS; accepts {', '.join(sorted(server.allowed))}"
    else:
        scheme, security = "ws", "insecure: no TLS, no authentication"

    def ready(port):
        print(
            f"fl-smpc worker {args.id}: {rows} rows x {features} features from {args.data} (sha256 {started}); "
            f"{rules}; serving on {scheme}://{args.host}:{port} ({security}; Ctrl-C to stop)",
            flush=True,
        )

    try:
        server.serve(ready)
    except OSError as err:  # e.g. the port is taken
        report(f"fl-smpc worker {args.id}", f"cannot serve on {args.host}:{args.port}: {err}")
        return FAILED
    now = server.fingerprint()
    state = "unchanged" if now == started else f"CHANGED (sha256 {now})"
    refused = "" if server.policy is None else f"; {server.policy.refused} request(s) refused"
    print(f"fl-smpc worker {args.id}: stopped; data {state}{refused}", flush=True)
    return OK
