"""The owner's privacy ledger: the private rounds it has released, on disk, so a restart does not reset its budget.

An owner's budget counts every release of its data over its whole life, not over one process: a worker that
crashed (or was restarted) and forgot its spent rounds would hand out a fresh epsilon. The ledger is one small
JSON file, ``{"settings", "precision", "dimension", "rounds"}``, rewritten atomically *before* each release
leaves the owner, so it never counts fewer rounds than were released (a crash between the write and the
reply over-counts by one, the safe side). It is bound to the owner's own DP settings and the grid: the
accountant composes one mechanism, so a ledger spent under other settings is refused at start-up rather than
mixed in; moving it away knowingly starts a new budget.

Several workers on the same data (one per model owner, say) share its ledger, and so one budget: each release is
counted under an exclusive lock beside the ledger (``PATH.lock``), after catching up with the rounds the others
recorded (:meth:`PrivacyLedger.take`). Without that, each process counted from what it had loaded at start and
the last writer won: two workers each spent the whole budget.
"""

import contextlib
import json
import os
from dataclasses import asdict
from typing import Any, Dict, Iterator

from ..errors import ConfigError, DataError
from ..history_io import write_atomically
from .privacy import BudgetExhausted, DPSettings, OwnerBudget

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: one worker per ledger is then the owner's care
    fcntl = None  # type: ignore[assignment]


def _binding(settings: DPSettings, precision: int, dimension: int) -> Dict[str, Any]:
    return {"settings": asdict(settings), "precision": precision, "dimension": dimension}


class PrivacyLedger:
    """The rounds an owner has spent, kept in ``path``; see the module docstring."""

    def __init__(self, path: str):
        self.path = os.fspath(path)

    def load(self, settings: DPSettings, dimension: int):
        """``(precision, rounds)`` recorded for these settings, or None when there is no ledger yet.

        DataError (one line) for a file that is not a ledger, or one spent under other settings.
        """
        if not os.path.exists(self.path):
            return None
        try:
            with open(self.path, encoding="utf-8") as f:
                doc = json.load(f)
            precision, rounds = doc["precision"], doc["rounds"]
            if not (isinstance(precision, int) and isinstance(rounds, int) and rounds >= 0):
                raise ValueError
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(f"privacy ledger {self.path}: not a ledger this version wrote") from None
        if {k: doc.get(k) for k in ("settings", "dimension")} != {
            "settings": asdict(settings),
            "dimension": dimension,
        }:
            raise DataError(
                f"privacy ledger {self.path}: spent under other DP settings or another model; keep this owner's "
                "settings, or move the ledger away knowingly to start a new budget"
            )
        return precision, rounds

    def budget(self, settings: DPSettings, precision: int, dimension: int, rounds: int) -> OwnerBudget:
        """The owner's budget with ``rounds`` already taken (from a loaded ledger)."""
        budget = OwnerBudget.for_settings(settings, precision, dimension)
        budget.restore(rounds)
        return budget

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def take(self, settings: DPSettings, precision: int, dimension: int, budget: OwnerBudget) -> None:
        """Count one more release before it leaves, under the ledger's lock: ``budget`` first catches up with the
        rounds another worker of this data recorded; BudgetExhausted if one more would exceed it, else the ledger
        holds ``budget.rounds + 1`` (the caller then takes the round). DataError / OSError: nothing recorded."""
        with self._locked():
            spent = self.load(settings, dimension)
            if spent is not None:
                if spent[0] != precision:
                    raise DataError(f"privacy ledger {self.path}: spent at precision {spent[0]}, not {precision}")
                if spent[1] > budget.rounds:
                    try:
                        budget.restore(spent[1])
                    except ConfigError as err:
                        raise BudgetExhausted(f"privacy budget spent: {err}") from None
            if not budget.can_take_round():
                raise BudgetExhausted(
                    f"privacy budget spent: {budget.rounds} rounds recorded in {os.path.basename(self.path)}"
                )
            self.record(settings, precision, dimension, budget.rounds + 1)

    def record(self, settings: DPSettings, precision: int, dimension: int, rounds: int) -> None:
        """Write ``rounds`` (atomically; OSError if the disk refuses, and then the round must not be released)."""
        doc = {**_binding(settings, precision, dimension), "rounds": rounds}

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1)

        write_atomically(self.path, write)
