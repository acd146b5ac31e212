"""``fl-smpc demo-network``: split the toy data, start one worker process per owner on free loopback
ports, run the training flags against them, and always stop the workers.

By default the demo makes a throw-away federation (a CA, the model owner and each owner) in its
temporary directory, so every connection is mutual TLS as in a real deployment; ``--certs DIR``
uses an existing one, ``--insecure`` plain ws://.
"""

import argparse
import os
import signal
import sys
import tempfile

from ..config import PEER_TIMEOUT, SECURITY_CHOICE
from ..errors import FlSmpcError
from .report import fail
from .train import build_parser, output_mode, parse_args, run_and_report, spec_from_args

PROG = "fl-smpc demo-network"
# The demo starts its own workers on the toy data: these training flags do not apply to it.
NOT_FOR_THE_DEMO = (
    "--transport",
    "--training",
    "--task",
    "--dataset",
    "--data-file",
    "--features",
    "--partition",
    "--loss",
)


def demo_parser():
    return build_parser(
        PROG,
        omit=NOT_FOR_THE_DEMO,
        description="Start one `fl-smpc worker` process per owner on free loopback ports (the toy data split "
        "into one CSV each), train against them over mutual TLS with a throw-away federation (or --certs "
        "DIR, or --insecure), and always stop the workers.",
        epilog="the same training flags as `fl-smpc`, without --transport, --dataset and the sms flags; "
        "--workers takes names only",
    )


def main(argv) -> int:
    parser = demo_parser()
    args = parse_args(parser, argv)
    if "=" in args.workers:
        parser.error("the demo starts its own workers: give --workers as names only")
    if args.certs is not None and args.insecure:
        parser.error("--certs and --insecure exclude each other: " + SECURITY_CHOICE)
    try:  # every flag checked before a process starts
        names_spec = spec_from_args(argparse.Namespace(**{**vars(args), "certs": None, "insecure": False}))
    except FlSmpcError as err:
        parser.error(str(err))
    from ..network.csvdata import split_to_csv
    from ..network.launcher import local_workers
    from ..network.tls import create_federation

    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the workers
    with tempfile.TemporaryDirectory(prefix="fl-smpc-demo-") as tmp:
        try:
            names = names_spec.config.workers
            paths = split_to_csv(os.path.join(tmp, "data"), names)
            certs = args.certs
            if certs is None and not args.insecure:
                certs = os.path.join(tmp, "certs")
                create_federation(certs, [args.model_party, *names], days=1)
            with local_workers(
                paths, timeout=min(PEER_TIMEOUT, args.timeout / 2), certs=certs, model_party=args.model_party
            ) as addresses:
                workers = ",".join(f"{n}={h}:{p}" for n, (h, p) in addresses.items())
                how = "plain ws:// (--insecure)" if certs is None else "mutual TLS"
                print(f"{PROG}: started {len(addresses)} worker processes over {how}: {workers}", file=sys.stderr)
                spec = spec_from_args(args, workers=workers, transport="websocket", certs=certs)
                return run_and_report(spec, output_mode(args), args.plot, args.history, PROG, args.save_model)
        except FlSmpcError as err:  # bad --certs: 2; a worker that does not start: 1
            return fail(PROG, err)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted; workers stopped", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
