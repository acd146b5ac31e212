"""Checkpoints: the run so far (config, global model, completed rounds) as one JSON file.

Written after every completed round through ``run_rounds(on_round=...)``, atomically (temporary
file in the same directory, fsync, ``os.replace``), so a crash mid-write leaves the previous
checkpoint intact. Resuming passes the loaded :class:`~fl_smpc.federated.History` back to
``run_rounds(history=...)``, which continues after its last round. JSON floats round-trip float32
values exactly, so a resumed run ends with the same model as an uninterrupted one.
"""
import json
import os
import tempfile

import torch

from .config import FLConfig
from .federated import History, RoundResult

FORMAT = "fl-smpc-checkpoint/1"


class CheckpointError(ValueError):
    """The checkpoint file is missing, unreadable or not an fl-smpc checkpoint."""


def save_checkpoint(path: str, history: History) -> None:
    """Atomically write ``history`` (``History.to_dict()`` plus format and completed-round count)."""
    doc = {"format": FORMAT, "completed_rounds": len(history.rounds), **history.to_dict()}
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def checkpoint_writer(path: str):
    """An ``on_round(result, history)`` callback that checkpoints after every completed round."""
    def write(_result, history):
        try:
            save_checkpoint(path, history)
        except OSError as err:  # disk full, directory removed...: the CLI still writes --plot/--history
            failure = CheckpointError(f"{path}: cannot write the checkpoint after round {len(history.rounds)}: {err}")
            failure.history = history
            raise failure from err

    return write


def _state(lists: dict) -> dict:
    return {name: torch.tensor(value) for name, value in lists.items()}


def load_checkpoint(path: str) -> History:
    """Rebuild the :class:`History` saved by :func:`save_checkpoint`; errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint: {err}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an fl-smpc checkpoint (expected format {FORMAT!r})")
    try:
        history = History(FLConfig(**doc["config"]), _state(doc["initial_model"]), doc["initial_global_loss"],
                          initial_metrics=doc.get("initial_metrics", {}))
        for item in doc["rounds"]:
            history.rounds.append(RoundResult(item["round"], item["worker_losses"], item["global_loss"],
                                              _state(item["model"]), item.get("metrics", {})))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: malformed checkpoint: {type(err).__name__}: {err}") from None
    if [r.round for r in history.rounds] != list(range(1, len(history.rounds) + 1)):
        raise CheckpointError(f"{path}: rounds are not numbered 1..{len(history.rounds)}")
    return history
