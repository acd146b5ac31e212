"""A run's record, whichever loop made it: :class:`History` and :class:`RoundResult`, and the small rules
both round loops share (which owners train in a round, how a loss reduces).

The tutorial's loop (:mod:`fl_smpc.federated`) and owner-side training (:mod:`fl_smpc.model_owner.rounds`)
both return a History; :mod:`fl_smpc.history_io` writes and reads it.
"""

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .config import LOSS_REDUCTIONS, FLConfig
from .errors import ConfigError


@dataclass
class RoundResult:
    """What one round produced: each owner's last local loss, the global loss after the update, the model."""

    round: int
    worker_losses: Dict[str, float]
    global_loss: float
    model: Dict[str, torch.Tensor]
    metrics: Dict[str, float] = field(default_factory=dict)  # from ``evaluate``, e.g. test accuracy
    contributors: List[str] = field(default_factory=list)  # owners whose models are in the average
    dropped: Dict[str, str] = field(default_factory=dict)  # owner -> why it was left out of this round
    # owner-side training: no single owner's loss leaves it; this is the owners' weighted mean last local loss
    local_loss: Optional[float] = None
    # differential privacy: each contributing owner's epsilon spent so far (public: settings and rounds only)
    epsilon: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready form: one item of the ``--json`` document's ``rounds`` (a ``--jsonl`` line's body)."""
        item: Dict[str, Any] = {
            "round": self.round,
            "worker_losses": dict(self.worker_losses),
            "global_loss": self.global_loss,
            "model": state_to_lists(self.model),
            "contributors": list(self.contributors),
            "dropped": dict(self.dropped),
        }
        if self.local_loss is not None:
            item["local_loss"] = self.local_loss
        if self.epsilon:
            item["epsilon"] = dict(self.epsilon)
        if self.metrics:
            item["metrics"] = dict(self.metrics)
        return item


@dataclass
class History:
    """A run's record: the settings actually used (with the drawn seed), the start, and every round."""

    config: FLConfig
    initial_model: Dict[str, torch.Tensor]
    initial_loss: float
    rounds: List[RoundResult] = field(default_factory=list)
    initial_metrics: Dict[str, float] = field(default_factory=dict)
    stopped: Optional[str] = None  # why the run ended before config.rounds (e.g. owners' privacy budgets spent)

    def latest_state(self) -> Dict[str, torch.Tensor]:
        """The global model after the last completed round (the initial model if none completed)."""
        return self.rounds[-1].model if self.rounds else self.initial_model

    def to_dict(self) -> dict:
        """JSON-ready form; the keys are a stable interface for other tools."""
        doc: Dict[str, Any] = {
            "config": {**asdict(self.config), "workers": list(self.config.workers)},
            "initial_model": state_to_lists(self.initial_model),
            "initial_global_loss": self.initial_loss,
            "rounds": [],
        }
        if self.initial_metrics:
            doc["initial_metrics"] = dict(self.initial_metrics)
        if self.stopped:
            doc["stopped"] = self.stopped
        doc["rounds"] = [r.to_dict() for r in self.rounds]
        return doc


def snapshot(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def state_to_lists(state: Dict[str, torch.Tensor]) -> Dict[str, list]:
    return {name: t.tolist() for name, t in state.items()}


def declared_reduction(loss_fn) -> Optional[str]:
    """The reduction a torch loss module (``nn.MSELoss()``) or ``functools.partial(..., reduction=...)`` names."""
    reduction = getattr(loss_fn, "reduction", None)
    if reduction is None:
        reduction = (getattr(loss_fn, "keywords", None) or {}).get("reduction")
    return reduction if isinstance(reduction, str) else None


def check_loss_reduction(loss_fn, config: FLConfig) -> None:
    """Refuse a loss whose own ``reduction`` contradicts ``config.loss_reduction`` (plain functions cannot tell)."""
    declared = declared_reduction(loss_fn)
    if declared is None or declared == config.loss_reduction:
        return
    if declared in LOSS_REDUCTIONS:
        raise ConfigError(
            f"loss_fn reduces by {declared!r} but config.loss_reduction is {config.loss_reduction!r}: "
            f"use FLConfig(loss_reduction={declared!r})"
        )
    raise ConfigError(f"loss_fn has reduction {declared!r}: it must return a scalar, by 'sum' or 'mean'")


def owners_of_round(config: FLConfig, round_number: int) -> List[int]:
    """Indices of the owners that train in round ``round_number``: all, or ``owners_per_round`` of them.

    The subset is drawn from the run's seed and the round number only, so a run (and a resumed one)
    chooses the same owners every time.
    """
    n = len(config.workers)
    if config.owners_per_round is None or config.owners_per_round == n:
        return list(range(n))
    rng = random.Random(f"fl-smpc owners {config.seed} {round_number}")
    return sorted(rng.sample(range(n), config.owners_per_round))
