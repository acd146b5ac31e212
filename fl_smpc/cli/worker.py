"""``fl-smpc worker``: serve one data owner -- its data, its task, its bounds -- until SIGINT/SIGTERM."""

from ..config import (
    DEFAULT_BOUNDS,
    DEFAULT_TASK,
    DP_NOISE_FLOOR,
    MODEL_PARTY,
    SECURITY_CHOICE,
    WORKER_HOST,
    WORKER_PORT,
    FLConfig,
    OwnerBounds,
    check_party,
    check_port,
    check_positive_float,
    parse_addresses,
)
from ..errors import FlSmpcError
from .report import BAD_INPUT, FAILED, OK, ArgumentParser, report

B = DEFAULT_BOUNDS
DP = FLConfig()  # the DP defaults (FLConfig's dp_* fields), the same on both sides


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="fl-smpc worker",
        description="Serve one data owner: load its data with its task, and for each round the model owner asks "
        "for, check the settings against this owner's bounds, train on the owner's own rows with the task's code, "
        "and release only its contribution to the secure sum. Until SIGINT/SIGTERM.",
    )
    p.add_argument("--id", required=True, help="this owner's id, e.g. bob (required)")
    p.add_argument(
        "--data",
        required=True,
        help="this owner's data file (required): a CSV with a header row, numeric features, the target last "
        "(0/1 for classification tasks); the sms task reads label<TAB>text or label,text",
    )
    p.add_argument(
        "--task",
        default=DEFAULT_TASK,
        help="what this owner trains: toy, sms, mlp-regression, mlp-classification, or your own module "
        "(path/to/task.py or package.module defining build_model and loss_fn) (default: %(default)s)",
    )
    p.add_argument("--host", default=WORKER_HOST, help="address to bind (default: %(default)s)")
    p.add_argument(
        "--port", type=int, default=WORKER_PORT, help="port to bind, 1-65535; 0 picks a free one (default: %(default)s)"
    )
    p.add_argument("--peers", default="", help="the other owners, NAME=HOST:PORT,... (required: at least one)")
    p.add_argument(
        "--certs",
        metavar="DIR",
        help="mutual TLS: DIR holds ca.pem, ID.pem and ID.key; only the model owner and the --peers may connect "
        "(one of --certs / --insecure is required)",
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
    bounds = p.add_argument_group("this owner's bounds (a request outside them is refused)")
    bounds.add_argument(
        "--min-owners", type=int, default=B.min_owners, help="contribute only to sums over at least this many owners"
    )
    bounds.add_argument("--max-lr", type=float, default=B.max_lr, help="largest learning rate (default: %(default)g)")
    bounds.add_argument(
        "--max-local-steps",
        type=int,
        default=B.max_local_steps,
        help="most local steps per round (default: %(default)s)",
    )
    bounds.add_argument(
        "--max-rounds",
        type=int,
        default=B.max_rounds,
        help="most contributions (train + evaluate) over this worker's life (default: %(default)s)",
    )
    bounds.add_argument(
        "--max-message",
        type=int,
        default=B.max_message,
        metavar="BYTES",
        help="largest message accepted (default: %(default)s)",
    )
    privacy = p.add_argument_group(
        "this owner's differential privacy (its own budget; a training request with weaker settings is refused)"
    )
    privacy.add_argument("--dp", choices=("local", "distributed"), help="require DP-FedSGD training (default: off)")
    privacy.add_argument("--dp-epsilon", type=float, default=DP.dp_epsilon, help="budget (default: %(default)s)")
    privacy.add_argument("--dp-delta", type=float, default=DP.dp_delta, help="(default: %(default)s)")
    privacy.add_argument(
        "--dp-noise", type=float, default=DP_NOISE_FLOOR, help="least noise multiplier (default: %(default)s)"
    )
    privacy.add_argument("--dp-clip", type=float, default=DP.dp_clip, help="clip norm C (default: %(default)s)")
    privacy.add_argument(
        "--dp-sampling", type=float, default=DP.dp_sampling, help="largest sampling rate q (default: %(default)s)"
    )
    privacy.add_argument(
        "--dp-accountant",
        choices=("prv", "rdp"),
        default=DP.dp_accountant,
        help="how this owner counts epsilon: prv (tight; for the discrete noise an assumption) or rdp (proven for "
        "it, larger) (default: %(default)s)",
    )
    privacy.add_argument(
        "--dp-ledger",
        metavar="PATH",
        help="the file that keeps the rounds this owner has spent across restarts (default: DATA.dp-ledger.json)",
    )
    bounds.add_argument(
        "--timeout",
        type=float,
        default=B.peer_timeout,
        help="seconds to reach a peer and to wait for its shares; keep it below the model owner's --timeout "
        "(default: %(default)s)",
    )
    return p


def owner_dp(args):
    """The owner's own DPSettings from its flags (None without --dp); ConfigError names a bad value."""
    if args.dp is None:
        return None
    from ..data_owner.privacy import DPSettings

    return DPSettings.for_mode(
        args.dp, args.dp_noise, args.dp_clip, args.dp_sampling, args.dp_epsilon, args.dp_delta, args.min_owners,
        args.dp_accountant,
    )  # fmt: skip


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
        check_positive_float("max-lr", args.max_lr)
        for name in ("min_owners", "max_local_steps", "max_rounds", "max_message"):
            if getattr(args, name) < 1:
                raise FlSmpcError(f"--{name.replace('_', '-')}: must be a positive integer, got {getattr(args, name)}")
        peers = parse_addresses(args.peers) if args.peers.strip() else {}
        bounds = OwnerBounds(
            min_owners=args.min_owners,
            max_lr=args.max_lr,
            max_local_steps=args.max_local_steps,
            max_rounds=args.max_rounds,
            max_message=args.max_message,
            peer_timeout=args.timeout,
            dp=owner_dp(args),
        )
    except FlSmpcError as err:
        parser.error(str(err))
    log = lambda line: print(f"fl-smpc worker {args.id}: {line}", flush=True)  # noqa: E731
    try:
        from ..data_owner.server import create_owner_server

        server = create_owner_server(
            args.id, args.data, args.task, args.host, args.port, peers, args.certs, args.model_party, bounds, log,
            ledger=(args.dp_ledger or f"{args.data}.dp-ledger.json") if args.dp else None,
        )  # fmt: skip
    except FlSmpcError as err:  # the data file, the task, the certificates, a setting
        report("fl-smpc worker", err)
        return BAD_INPUT
    owner = server.owner
    rows, features = owner.data.shape[0], owner.data.shape[1]
    if args.certs:
        scheme, security = "wss", f"mutual TLS; accepts {', '.join(sorted(server.allowed))}"
    else:
        scheme, security = "ws", "insecure: no TLS, no authentication"

    def ready(port):
        print(
            f"fl-smpc worker {args.id}: {rows} rows x {features} features from {args.data}; task {owner.task.name} "
            f"({owner.parameters} parameters); sums over >= {bounds.min_owners} owners; "
            + (
                f"differential privacy {args.dp}, epsilon {args.dp_epsilon:g} at delta {args.dp_delta:g} "
                f"({owner.budget.epsilon_spent if owner.budget else 0:.3g} spent, ledger {owner.ledger.path}); "
                if args.dp and owner.ledger
                else ""
            )
            + "serving on "
            f"{scheme}://{args.host}:{port} ({security}; Ctrl-C to stop)",
            flush=True,
        )

    try:
        server.serve(ready)
    except OSError as err:  # e.g. the port is taken
        report(f"fl-smpc worker {args.id}", f"cannot serve on {args.host}:{args.port}: {err}")
        return FAILED
    print(
        f"fl-smpc worker {args.id}: stopped; {owner.contributions} contribution(s) released, "
        f"{owner.refused} request(s) refused",
        flush=True,
    )
    return OK
