"""``fl-smpc demo-network``: split the toy data, start one worker process per owner on free loopback
ports, run the training flags against them, and always stop the workers."""

import os
import signal
import sys
import tempfile

from ..config import PEER_TIMEOUT
from ..errors import FlSmpcError
from .train import build_parser, parse_args, run_and_report, spec_from_args

PROG = "fl-smpc demo-network"


def main(argv) -> int:
    parser = build_parser(PROG)
    args = parse_args(parser, argv)
    if args.transport != "virtual" or "=" in args.workers:
        parser.error("the demo starts its own workers: give --workers as names only, without --transport")
    if args.dataset != "toy":
        parser.error("the demo serves the toy data; --dataset sms runs in-process only")
    try:
        names_spec = spec_from_args(args)  # every flag checked before a process starts
    except FlSmpcError as err:
        parser.error(str(err))
    from ..network.csvdata import split_to_csv
    from ..network.launcher import local_workers

    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the workers
    with tempfile.TemporaryDirectory(prefix="fl-smpc-demo-") as tmp:
        try:
            paths = split_to_csv(os.path.join(tmp, "data"), names_spec.config.workers)
            with local_workers(paths, timeout=min(PEER_TIMEOUT, args.timeout / 2)) as addresses:
                workers = ",".join(f"{n}={h}:{p}" for n, (h, p) in addresses.items())
                spec = spec_from_args(args, workers=workers, transport="websocket")
                return run_and_report(spec, args.json, args.plot, args.history, PROG)
        except FlSmpcError as err:
            print(f"{PROG}: error: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted; workers stopped", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
