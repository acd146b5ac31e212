"""A run's history as a flat table (one row per round per owner) for spreadsheets and plotting tools.

The ``--json`` document stays the complete machine-readable summary (model parameters included);
this file is the long format most tools plot directly.
"""
import csv
from pathlib import Path
from typing import Dict, List

FIELDS = ["round", "worker", "local_loss", "global_loss"]


def metric_names(history) -> List[str]:
    """Every metric key any round carries, sorted, so all rows share one header."""
    return sorted({name for r in history.rounds for name in r.metrics})


def history_rows(history) -> List[Dict]:
    """One dict per (round, owner): the owner's local loss, the round's global loss and its metrics.

    Round-level values (global loss, metrics) repeat on each owner's row; a metric a round lacks is
    left empty. The initial model (round 0) has no local losses; its loss is in the JSON document.
    """
    names = metric_names(history)
    clash = sorted(set(names) & set(FIELDS))
    if clash:
        raise ValueError(f"metrics {clash} clash with the history columns {FIELDS}; rename them")
    return [
        {"round": r.round, "worker": worker, "local_loss": loss, "global_loss": r.global_loss,
         **{name: r.metrics.get(name, "") for name in names}}
        for r in history.rounds
        for worker, loss in r.worker_losses.items()
    ]


def write_history_csv(history, path) -> Path:
    """Write :func:`history_rows` as CSV with a header; floats keep full precision (``repr``)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS + metric_names(history))
        writer.writeheader()
        writer.writerows(history_rows(history))
    return path
