"""Command-line side of the network mode: the ``worker``, ``demo-network`` and ``split-data``
subcommands, and the ``--transport``/``--checkpoint``/``--resume`` flags of the training run.

Importing this module is light (argparse only): :mod:`fl_smpc.cli` imports it at start-up.
"""
import argparse
import os
import signal
import sys
import tempfile
from typing import Dict, Optional, Tuple

from .config import FLConfig

SUBCOMMANDS = ("worker", "demo-network", "split-data")
REPLY_TIMEOUT = 30.0  # mirrors fl_smpc.network.REPLY_TIMEOUT (not imported: that module loads syft)
PEER_TIMEOUT = 10.0  # mirrors fl_smpc.network.CONNECT_TIMEOUT
Address = Tuple[str, int]


def parse_addresses(text: str) -> Dict[str, Address]:
    """``"bob=127.0.0.1:8777,alice=10.0.0.2:8778"`` -> ``{"bob": ("127.0.0.1", 8777), ...}``."""
    addresses = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, hostport = (s.strip() for s in item.partition("="))
        host, colon, port = hostport.rpartition(":")
        if not (sep and colon and name and host and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"bad worker address {item!r}: expected NAME=HOST:PORT, e.g. bob=127.0.0.1:8777")
        if name in addresses:
            raise ValueError(f"worker {name!r} is given twice")
        addresses[name] = (host, int(port))
    if not addresses:
        raise ValueError("no worker addresses given: expected NAME=HOST:PORT[,NAME=HOST:PORT...]")
    return addresses


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The training run's transport and checkpoint flags (added to :func:`fl_smpc.cli.build_parser`)."""
    p.epilog = ("other commands (each with --help): `fl-smpc worker` serves one data owner's CSV over websockets; "
                "`fl-smpc demo-network` runs three local workers and trains against them; "
                "`fl-smpc split-data` writes one CSV per owner")
    p.add_argument("--transport", choices=("virtual", "websocket"), default="virtual",
                   help="virtual: in-process VirtualWorkers; websocket: `fl-smpc worker` processes, "
                   "then --workers is NAME=HOST:PORT,... (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=REPLY_TIMEOUT,
                   help="websocket: seconds to wait for a worker's reply, and at most 10 to connect, before "
                   "failing with its name (default: %(default)s)")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="write the run (config, global model, rounds) to PATH after every round (default: off)")
    p.add_argument("--resume", metavar="PATH",
                   help="continue the run saved in checkpoint PATH; its config wins over the flags (default: off)")


def worker_addresses(args) -> Optional[Dict[str, Address]]:
    """``{name: (host, port)}`` for ``--transport websocket``; None in-process. Raises ValueError."""
    if args.transport == "virtual":
        bad = [w for w in args.workers if "=" in w]
        if bad:
            raise ValueError(f"--workers {bad}: NAME=HOST:PORT needs --transport websocket")
        return None
    return parse_addresses(",".join(args.workers))


def run_errors() -> tuple:
    """Errors a run reports as a one-line message and exit code 1 (besides RoundFailed)."""
    from .checkpoint import CheckpointError
    from .network import WorkerSetupError

    return ConnectionError, CheckpointError, WorkerSetupError


def train_from_args(config, args, addresses: Optional[Dict[str, Address]] = None, on_round=None):
    """Run with the chosen transport, checkpointing after each round and/or resuming; return the History.

    ``on_round(result, history)`` (e.g. a progress bar) is called after the checkpoint is written.
    """
    from torch import nn

    from .checkpoint import CheckpointError, checkpoint_writer, load_checkpoint

    history = load_checkpoint(args.resume) if args.resume else None
    if history is not None:
        config = history.config
        if addresses is not None and tuple(addresses) != config.workers:
            raise CheckpointError(f"{args.resume}: the checkpoint's workers are {list(config.workers)}, "
                                  f"--workers names {list(addresses)}")
    if args.checkpoint and not os.path.isdir(os.path.dirname(os.path.abspath(args.checkpoint))):
        raise CheckpointError(f"{args.checkpoint}: cannot write a checkpoint there: no such directory")
    callbacks = [checkpoint_writer(args.checkpoint)] if args.checkpoint else []
    callbacks += [on_round] if on_round else []

    def after_round(result, history):  # the checkpoint first, then the caller's callback
        for callback in callbacks:
            callback(result, history)

    if addresses is not None:
        from .network import train_network

        return train_network(config, addresses, history=history, on_round=after_round, timeout=args.timeout)
    from .federated import train_federated

    model = None
    if history is not None:
        model = nn.Linear(*reversed(history.initial_model["weight"].shape))
        model.load_state_dict(history.latest_state())
    return train_federated(config, model=model, history=history, on_round=after_round)


def run_subcommand(argv) -> int:
    """``fl-smpc worker|demo-network|split-data ...``."""
    command, rest = argv[0], list(argv[1:])
    return {"worker": worker_main, "demo-network": demo_main, "split-data": split_main}[command](rest)


def worker_main(argv) -> int:
    p = argparse.ArgumentParser(
        prog="fl-smpc worker",
        description="Serve one data owner: load its CSV (header row; numeric features; last column a 0/1 "
        "label), tag it for the model owner's search, and answer syft websocket requests until SIGINT/SIGTERM. "
        "No authentication, no TLS: expose only on trusted networks.")
    p.add_argument("--id", required=True, help="this owner's worker id, e.g. bob (required)")
    p.add_argument("--data", required=True, help="this owner's CSV file (required)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8777, help="port to bind; 0 picks a free one (default: %(default)s)")
    p.add_argument("--peers", default="", help="the other owners, NAME=HOST:PORT,... (default: none)")
    p.add_argument("--timeout", type=float, default=PEER_TIMEOUT,
                   help="seconds to keep trying to reach a peer, and to wait for its reply; keep it below the "
                   "model owner's --timeout so a dead peer is named (default: %(default)s)")
    args = p.parse_args(argv)
    from .csvdata import DataFileError

    try:
        peers = parse_addresses(args.peers) if args.peers.strip() else {}
        from .network import DATA_TAG, create_data_owner

        server = create_data_owner(args.id, args.data, args.host, args.port, peers, args.timeout)
    except (DataFileError, ValueError) as err:
        print(f"fl-smpc worker: error: {err}", file=sys.stderr)
        return 2
    rows, features = server.search([DATA_TAG])[0].shape

    def ready(port):
        print(f"fl-smpc worker {args.id}: {rows} rows x {features} features from {args.data}; "
              f"serving on ws://{args.host}:{port} (Ctrl-C to stop)", flush=True)

    try:
        server.serve(ready)
    except OSError as err:  # e.g. the port is taken
        print(f"fl-smpc worker {args.id}: error: cannot serve on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    print(f"fl-smpc worker {args.id}: stopped", flush=True)
    return 0


def split_main(argv) -> int:
    p = argparse.ArgumentParser(prog="fl-smpc split-data",
                                description="Write one CSV per data owner, split like the in-process run.")
    p.add_argument("--out", required=True, help="directory for NAME.csv files (required)")
    p.add_argument("--workers", default="bob,alice,jane", help="owner names, comma-separated (default: %(default)s)")
    p.add_argument("--csv", help="a CSV (same format) to split instead of the seed's toy data (default: toy data)")
    args = p.parse_args(argv)
    from .csvdata import DataFileError, read_csv, split_to_csv

    try:
        data = read_csv(args.csv) if args.csv else (None, None)
        names = FLConfig(workers=[n.strip() for n in args.workers.split(",")]).workers  # unique, non-empty
        for name, path in split_to_csv(args.out, names, *data).items():
            print(f"{name}: {path}")
    except (DataFileError, ValueError, OSError) as err:
        print(f"fl-smpc split-data: error: {err}", file=sys.stderr)
        return 2
    return 0


def demo_main(argv) -> int:
    """Split the toy data, start one worker process per owner on free loopback ports, run, stop them.

    Takes the in-process run's flags (``--workers`` as names) and hands them, plus the workers'
    addresses, to :func:`fl_smpc.cli.main` -- same output, same checkpoint flags.
    """
    from .cli import build_parser, main

    parser = build_parser()
    parser.prog = "fl-smpc demo-network"
    args = parser.parse_args(argv)
    if args.transport != "virtual" or any("=" in w for w in args.workers):
        parser.error("the demo starts its own workers: give --workers as names only, without --transport")
    from .csvdata import split_to_csv
    from .launcher import WorkerStartError, local_workers

    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the workers
    with tempfile.TemporaryDirectory(prefix="fl-smpc-demo-") as tmp:
        try:
            paths = split_to_csv(os.path.join(tmp, "data"), args.workers)
            with local_workers(paths, timeout=min(PEER_TIMEOUT, args.timeout / 2)) as addresses:
                workers = ",".join(f"{n}={h}:{p}" for n, (h, p) in addresses.items())
                return main([*argv, "--transport", "websocket", "--workers", workers])
        except WorkerStartError as err:
            print(f"fl-smpc demo-network: error: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("fl-smpc demo-network: interrupted; workers stopped", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
