"""A run's History in and out: JSON documents, checkpoints, the history CSV, and the text printout.

Checkpoints are written after every completed round, atomically (temporary file in the same
directory, fsync, ``os.replace``: :func:`write_atomically`), so a crash mid-write leaves the previous
checkpoint intact; the history CSV and the picture are written the same way. JSON
floats round-trip float32 values exactly, so a resumed run ends with the same model as an
uninterrupted one. A checkpoint is untrusted input: every field is checked before it is used.
JSON output never contains NaN or Infinity (not JSON): non-finite numbers are written as ``null``.
"""

import contextlib
import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .config import FLConfig
from .errors import CheckpointError, CheckpointWriteError, ConfigError

FORMAT = "fl-smpc-checkpoint/1"
CSV_FIELDS = ["round", "worker", "local_loss", "global_loss"]


def json_safe(value):
    """``value`` with every non-finite float replaced by None, so ``json.dumps`` writes valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def to_json(doc: dict, indent=None) -> str:
    """Strict JSON (``allow_nan=False``) of a document, non-finite numbers as null."""
    return json.dumps(json_safe(doc), indent=indent, allow_nan=False)


def write_atomically(path, write: Callable[[str], None], private: bool = True) -> None:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a temporary file in the same directory,
    which is synced to disk and renamed over ``path``; on any error it is removed and ``path`` is untouched.

    The temporary name keeps ``path``'s suffix (matplotlib picks the format from it). ``private``: mode
    0600; else the mode a new file gets (0666 less the umask).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fl-smpc-", suffix=".tmp" + os.path.splitext(path)[1], dir=directory)
    try:
        os.close(fd)
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if not private:
            os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the process's umask."""
    mask = os.umask(0o077)
    os.umask(mask)
    return 0o666 & ~mask


# --- checkpoints ---


def save_checkpoint(path: str, history) -> None:
    """Atomically write ``history`` (``History.to_dict()`` plus format and completed-round count)."""
    doc = {"format": FORMAT, "completed_rounds": len(history.rounds), **history.to_dict()}
    text = to_json(doc)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    write_atomically(path, write)


def checkpoint_writer(path: str):
    """An ``on_round(result, history)`` callback that checkpoints after every completed round."""

    def write(_result, history):
        try:
            save_checkpoint(path, history)
        except OSError as err:  # disk full, directory removed...: the CLI still writes --plot/--history
            done = len(history.rounds)
            failure = CheckpointWriteError(f"{path}: cannot write the checkpoint after round {done}: {err}")
            failure.history = history
            raise failure from err

    return write


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointError(f"{what}: expected a number, got {type(value).__name__} {value!r:.40}")
    try:
        return float(value)
    except OverflowError:  # a JSON integer of hundreds of digits
        raise CheckpointError(f"{what}: the number {value!r:.40}... is too large") from None


def _state(lists, what: str, shapes: Optional[Dict[str, tuple]] = None) -> dict:
    """A model state (name -> tensor) from JSON lists: finite numbers, and the same shapes as ``shapes``."""
    import torch

    if not isinstance(lists, dict) or not lists:
        raise CheckpointError(f"{what}: expected a non-empty object of parameter name -> values")
    state = {}
    for name, values in lists.items():
        try:
            tensor = torch.tensor(values, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise CheckpointError(f"{what}.{name}: expected a (nested) list of numbers of one shape") from None
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{what}.{name}: contains NaN, Infinity or values too large for float32")
        state[name] = tensor
    if shapes is not None:
        got = {name: tuple(t.shape) for name, t in state.items()}
        if got != shapes:
            raise CheckpointError(f"{what}: parameters {got} differ from the initial model's {shapes}")
    return state


def history_from_dict(doc: dict, what: str = "malformed checkpoint"):
    """Rebuild a :class:`~fl_smpc.federated.History` from its ``to_dict()`` form; CheckpointError names the field.

    ``what`` starts every message (the file name, when loading a checkpoint).
    """
    from .history import History, RoundResult

    if not isinstance(doc, dict):
        raise CheckpointError(f"{what}: expected a JSON object")
    for key, kind in (("config", dict), ("initial_model", dict), ("rounds", list)):
        if not isinstance(doc.get(key), kind):
            raise CheckpointError(f"{what}: field {key!r} missing or not a JSON {'object' if kind is dict else 'list'}")
    raw = doc["config"]
    if not isinstance(raw.get("workers"), list):
        raise CheckpointError(f"{what}: config.workers must be a list of names, got {raw.get('workers')!r:.60}")
    try:
        config = FLConfig(**raw)
    except (ConfigError, TypeError) as err:  # a bad value; unknown or missing keys
        raise CheckpointError(f"{what}: config: {err}") from None
    initial = _state(doc["initial_model"], f"{what}: initial_model")
    shapes = {name: tuple(t.shape) for name, t in initial.items()}
    history = History(
        config,
        initial,
        _loss(doc.get("initial_global_loss"), f"{what}: initial_global_loss", config),
        initial_metrics=_metrics(doc.get("initial_metrics", {}), f"{what}: initial_metrics"),
    )
    for i, item in enumerate(doc["rounds"], start=1):
        where = f"{what}: rounds[{i - 1}]"
        if not isinstance(item, dict) or item.get("round") != i:
            raise CheckpointError(f"{where}: rounds must be objects numbered 1, 2, ... in order")
        losses = item.get("worker_losses")
        if not isinstance(losses, dict) or set(losses) - set(config.workers):
            raise CheckpointError(f"{where}.worker_losses: expected an object of worker name -> loss")
        contributors, dropped = item.get("contributors", list(losses)), item.get("dropped", {})
        if not (
            isinstance(contributors, list)
            and all(isinstance(c, str) for c in contributors)
            and set(contributors) <= set(config.workers)
            and isinstance(dropped, dict)
            and set(dropped) <= set(config.workers)
            and all(isinstance(v, str) for v in dropped.values())
        ):
            raise CheckpointError(f"{where}: contributors must be a list and dropped an object of this run's owners")
        history.rounds.append(
            RoundResult(
                i,
                {w: _number(v, f"{where}.worker_losses.{w}") for w, v in losses.items()},
                _loss(item.get("global_loss"), f"{where}.global_loss", config),
                _state(item.get("model"), f"{where}.model", shapes),
                _metrics(item.get("metrics", {}), f"{where}.metrics"),
                contributors,
                dropped,
                None if item.get("local_loss") is None else _number(item["local_loss"], f"{where}.local_loss"),
                _epsilon(item.get("epsilon", {}), f"{where}.epsilon", config.workers),
            )
        )
    if len(history.rounds) > config.rounds:
        raise CheckpointError(f"{what}: {len(history.rounds)} rounds recorded but the config asks for {config.rounds}")
    stopped = doc.get("stopped")
    if stopped is not None and not isinstance(stopped, str):
        raise CheckpointError(f"{what}: stopped: expected a string, got {type(stopped).__name__}")
    history.stopped = stopped
    return history


def _loss(value, what: str, config: FLConfig) -> float:
    """A global loss; with differential privacy ``null`` too (NaN written as JSON: the owners evaluate nothing)."""
    if value is None and config.dp is not None:
        return math.nan
    return _number(value, what)


def _epsilon(value, what: str, owners) -> Dict[str, float]:
    """A round's epsilon spent per owner: an object of this run's owners -> finite numbers >= 0."""
    if not isinstance(value, dict) or set(value) - set(owners):
        raise CheckpointError(f"{what}: expected an object of this run's owner names -> epsilon spent")
    spent = {owner: _number(v, f"{what}.{owner}") for owner, v in value.items()}
    bad = [owner for owner, eps in spent.items() if not (math.isfinite(eps) and eps >= 0)]
    if bad:
        raise CheckpointError(f"{what}.{bad[0]}: epsilon spent must be a finite number >= 0")
    return spent


def _metrics(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise CheckpointError(f"{what}: expected an object of metric name -> number")
    return {k: _number(v, f"{what}.{k}") for k, v in value.items()}


def load_checkpoint(path: str):
    """Rebuild the History saved by :func:`save_checkpoint`; every error names the file and the field."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint: {err}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: cannot read checkpoint: JSON nested too deeply") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an fl-smpc checkpoint (expected format {FORMAT!r})")
    try:
        return history_from_dict(doc, f"{path}: malformed checkpoint")
    except RecursionError:
        raise CheckpointError(f"{path}: malformed checkpoint: values nested too deeply") from None


# --- the history CSV: one row per round per owner ---


def metric_names(history) -> List[str]:
    """Every metric key any round carries, sorted, so all rows share one header."""
    return sorted({name for r in history.rounds for name in r.metrics})


EPSILON_PREFIX = "epsilon_"
DP_ROW = "(owners)"  # with differential privacy no owner releases a loss: one row per round


def epsilon_columns(history) -> List[str]:
    """With differential privacy, one column per owner of the run (``epsilon_bob``...): its epsilon spent so far."""
    if history.config.dp is None:
        return []
    return [EPSILON_PREFIX + owner for owner in history.config.workers]


def csv_fields(history) -> List[str]:
    """The history CSV's header: :data:`CSV_FIELDS`, with DP the owners' epsilon columns, then the metrics."""
    return CSV_FIELDS + epsilon_columns(history) + metric_names(history)


def _loss_rows(r, dp: bool) -> List[tuple]:
    """(worker, local loss) of a round's rows: each owner's loss (tutorial), the owners' mean (owner-side),
    or with DP, where no loss leaves an owner, one row with the loss left empty."""
    if r.local_loss is not None:
        return [("(owners' mean)", r.local_loss)]
    if dp and not r.worker_losses:
        return [(DP_ROW, "")]
    return list(r.worker_losses.items())


def history_rows(history) -> List[Dict]:
    """One dict per (round, owner): the owner's local loss, the round's global loss and its metrics.

    Round-level values (global loss, metrics) repeat on each owner's row; a metric a round lacks is
    left empty. The initial model (round 0) has no local losses; its loss is in the JSON document.
    Owner-side training releases only the owners' mean local loss (one row per round, worker
    ``(owners' mean)``); with differential privacy not even that (one row per round, worker ``(owners)``,
    local loss empty), and each owner's epsilon spent after the round is in its column ``epsilon_OWNER``
    (empty for an owner that did not contribute to the round).
    """
    names, spent = metric_names(history), epsilon_columns(history)
    clash = sorted(set(names) & set(CSV_FIELDS + spent))
    if clash:
        raise ConfigError(f"metrics {clash} clash with the history columns {CSV_FIELDS + spent}; rename them")
    return [
        {
            "round": r.round,
            "worker": worker,
            "local_loss": loss,
            "global_loss": r.global_loss,
            **{column: r.epsilon.get(column[len(EPSILON_PREFIX) :], "") for column in spent},
            **{name: r.metrics.get(name, "") for name in names},
        }
        for r in history.rounds
        for worker, loss in _loss_rows(r, history.config.dp is not None)
    ]


def write_history_csv(history, path) -> Path:
    """Write :func:`history_rows` as CSV with a header, atomically; floats keep full precision (``repr``)."""
    path, rows = Path(path), history_rows(history)  # a refused history writes nothing

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=csv_fields(history))
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(path, write, private=False)
    return path


# --- text ---


NOT_RELEASED = "not released (DP)"  # with differential privacy no owner releases a loss


def loss_text(loss: float, width: int = 0) -> str:
    """A loss for the printout; NaN (with differential privacy the owners evaluate nothing) says so."""
    return f"{loss:>{width}.4f}" if loss == loss else f"{'–' if width else NOT_RELEASED:>{width}}"


def format_history(history) -> str:
    """The seed's printout, one block per round: averaged weights and bias, each owner's loss."""
    return "\n".join([format_header(history), *(format_round(r, history.config.rounds) for r in history.rounds)])


def format_header(history) -> str:
    """The printout's first line: seed, workers, the initial model's global loss."""
    return (
        f"seed {history.config.seed}; workers {', '.join(history.config.workers)}; "
        f"initial global loss {loss_text(history.initial_loss)}"
    )


def format_round(r, rounds: int) -> str:
    """One round's block of the printout (printed as soon as the round completes)."""
    lines = [f"round {r.round}/{rounds}  global loss {loss_text(r.global_loss)}"]
    for name, value in r.model.items():
        lines.append(f"  avg {name}: {[round(v, 4) for v in value.flatten().tolist()]}")
    if r.worker_losses:
        lines.append("  " + " ".join(f"{name.capitalize()}_loss: {loss:.4f}" for name, loss in r.worker_losses.items()))
    if r.epsilon:  # differential privacy: each owner's epsilon spent so far (public)
        lines.append("  epsilon spent: " + ", ".join(f"{owner} {eps:.3f}" for owner, eps in r.epsilon.items()))
    if r.local_loss is not None:  # owner-side training: only the owners' weighted mean leaves them
        lines.append(f"  local loss (owners' weighted mean): {r.local_loss:.4f}; owners {', '.join(r.contributors)}")
    return "\n".join(lines)


SMS_COLUMNS = f"{'round':>5} {'global loss':>11} {'accuracy':>8} {'precision':>9} {'recall':>6} {'f1':>6}"


SMS_EPSILON = "  epsilon spent"  # the SMS table's last column with differential privacy


def sms_columns(config) -> str:
    """The SMS run's table header; with differential privacy, a column of the owners' epsilon spent."""
    return SMS_COLUMNS + (SMS_EPSILON if config.dp is not None else "")


def format_sms_row(n: int, loss: float, m: dict, epsilon: Optional[Dict[str, float]] = None) -> str:
    """One row of the SMS run's per-round table: the global loss and the test metrics after round ``n``;
    with ``epsilon`` (DP: each contributing owner's epsilon spent), one number if the owners spent the same."""
    scores = f"{m['accuracy']:>8.4f} {m['precision']:>9.4f} {m['recall']:>6.4f} {m['f1']:>6.4f}"
    row = f"{n:>5} {loss_text(loss, 11)} {scores}"
    if epsilon is None:
        return row
    spent = sorted(set(epsilon.values()))
    text = f"{spent[0]:.3f}" if len(spent) == 1 else ", ".join(f"{o} {e:.3f}" for o, e in epsilon.items())
    return f"{row}  {text or '0':>13}"


def format_sms_settings(history, spec) -> str:
    return (
        f"seed {history.config.seed}; loss {spec.loss}; lr {history.config.lr}; {history.config.local_steps} "
        f"local steps; {spec.features} hashed features"
    )


def format_privacy(history) -> str:
    """With differential privacy: each owner's epsilon spent (delta, budget) and why the run stopped, if it did."""
    config = history.config
    if config.dp is None:
        return ""
    spent = history.rounds[-1].epsilon if history.rounds else {}
    lines = [
        f"differential privacy ({config.dp}): epsilon spent per owner after {len(history.rounds)} rounds "
        f"(delta {config.dp_delta:g}, budget {config.dp_epsilon:g}): "
        + (", ".join(f"{owner} {eps:.3f}" for owner, eps in spent.items()) or "none")
    ]
    if history.stopped:
        lines.append(f"stopped early: {history.stopped}")
    return "\n".join(lines)


def format_sms_result(result) -> str:
    """Per-round test metrics of the global model, then federated-secure vs the two baselines."""
    h = result.history
    dp = h.config.dp is not None
    rows: List[tuple] = [(0, h.initial_loss, h.initial_metrics, {} if dp else None)]
    rows += [(r.round, r.global_loss, r.metrics, r.epsilon if dp else None) for r in h.rounds]
    lines = [format_sms_data(result), format_sms_settings(h, result.spec), sms_columns(h.config)]
    lines += [format_sms_row(*row) for row in rows]
    lines.append(format_sms_summary(result))
    return "\n".join(lines)


def format_sms_data(result) -> str:
    """The SMS run's data line: source, counts, test set, each owner's share."""
    h, d = result.history, result.dataset
    shares = ", ".join(
        f"{w} {o['messages']} ({o['spam_rate']:.1%} spam)" for w, o in zip(h.config.workers, d["owners"])
    )
    return (
        f"data: {d['source']}: {d['messages']} messages, {d['duplicates_removed']} duplicates removed; "
        f"test {d['test']} ({d['test_spam']} spam); owners ({result.spec.partition}): {shares}"
    )


def format_sms_summary(result) -> str:
    """Federated secure against the centralized and always-ham baselines."""
    h = result.history
    central = result.baseline["centralized"]
    lines = [f"\n{'model':<32} {'accuracy':>8} {'precision':>9} {'recall':>6} {'f1':>6} {'time (s)':>8}"]
    for name, m, seconds in (
        (f"federated secure ({len(h.rounds)} rounds)", h.rounds[-1].metrics, result.seconds),
        (f"centralized ({central['steps']} steps{', no DP' if h.config.dp else ''})", central, central["seconds"]),
        ("always ham", result.baseline["always_ham"], 0.0),
    ):
        lines.append(
            f"{name:<32} {m['accuracy']:>8.4f} {m['precision']:>9.4f} {m['recall']:>6.4f} {m['f1']:>6.4f} "
            f"{seconds:>8.1f}"
        )
    return "\n".join(lines)
