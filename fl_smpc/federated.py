"""Step 5: the round loop -- send the global model, train locally, securely average, update.

Returns a :class:`History`; printing is left to the CLI.
"""
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils import vector_to_parameters

from .config import FLConfig
from .errors import ConfigError, RoundFailed
from .data import send_partitions, split_dataset, toy_dataset
from .pairwise import pairwise_average
from .secure_aggregation import secure_average
from .training import remote_loss, sum_squared_error, train_locally
from .workers import create_hook, forget_transient_ids, virtual_workers


@dataclass
class RoundResult:
    """What one round produced: each owner's last local loss, the global loss after the update, the model."""

    round: int
    worker_losses: Dict[str, float]
    global_loss: float
    model: Dict[str, torch.Tensor]
    metrics: Dict[str, float] = field(default_factory=dict)  # from ``evaluate``, e.g. test accuracy


@dataclass
class History:
    """A run's record: the settings actually used (with the drawn seed), the start, and every round."""

    config: FLConfig
    initial_model: Dict[str, torch.Tensor]
    initial_loss: float
    rounds: List[RoundResult] = field(default_factory=list)
    initial_metrics: Dict[str, float] = field(default_factory=dict)

    def latest_state(self) -> Dict[str, torch.Tensor]:
        """The global model after the last completed round (the initial model if none completed)."""
        return self.rounds[-1].model if self.rounds else self.initial_model

    def to_dict(self) -> dict:
        """JSON-ready form; the keys are a stable interface for other tools."""
        doc = {
            "config": {**asdict(self.config), "workers": list(self.config.workers)},
            "initial_model": state_to_lists(self.initial_model),
            "initial_global_loss": self.initial_loss,
            "rounds": [],
        }
        if self.initial_metrics:
            doc["initial_metrics"] = dict(self.initial_metrics)
        for r in self.rounds:
            item = {"round": r.round, "worker_losses": dict(r.worker_losses), "global_loss": r.global_loss,
                    "model": state_to_lists(r.model)}
            if r.metrics:
                item["metrics"] = dict(r.metrics)
            doc["rounds"].append(item)
        return doc


def snapshot(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def state_to_lists(state: Dict[str, torch.Tensor]) -> Dict[str, list]:
    return {name: t.tolist() for name, t in state.items()}


def global_loss(model: nn.Module, remote_data: Sequence[Tuple], loss_fn=sum_squared_error) -> float:
    """Loss of the global model on all owners' data, as the sum of per-owner losses computed remotely."""
    total = 0.0
    with forget_transient_ids([ptr.location for ptr, _ in remote_data]):
        for data_ptr, target_ptr in remote_data:  # the copy is freed as soon as its loss is back
            total += remote_loss(model.copy().send(data_ptr.location), data_ptr, target_ptr, loss_fn)
    return total


def run_round(model: nn.Module, workers: Sequence, remote_data: Sequence[Tuple], config: FLConfig,
              loss_fn=sum_squared_error) -> Dict[str, float]:
    """One round, in place on ``model``; the model is only written once the secure average succeeded."""
    with forget_transient_ids(workers):
        remote_models = [model.copy().send(w) for w in workers]
        losses = {
            w.id: train_locally(m, x, y, config.lr, config.local_steps, loss_fn)
            for w, m, (x, y) in zip(workers, remote_models, remote_data)
        }
        aggregate = pairwise_average if config.aggregation == "pairwise" else secure_average
        average = aggregate(remote_models, workers, config.precision_fractional)
        del remote_models  # frees the copies on the workers now, before their ids are released
        with torch.no_grad():
            vector_to_parameters(average, model.parameters())
    return losses


def run_rounds(model: nn.Module, workers: Sequence, remote_data: Sequence[Tuple], config: FLConfig,
               loss_fn=sum_squared_error, history: History = None, evaluate=None, on_round=None) -> History:
    """The round loop over already connected workers holding ``remote_data`` (any syft transport).

    ``evaluate(model) -> dict`` adds metrics to every round (e.g. on a held-out test set);
    ``on_round(result, history)`` is called after each completed round (progress bars, checkpoints).
    Pass a ``history`` to resume: rounds continue after its last completed one.
    """
    evaluate = evaluate or (lambda _model: {})
    if history is None:
        history = History(config, snapshot(model), global_loss(model, remote_data, loss_fn),
                          initial_metrics=evaluate(model))
    for r in range(len(history.rounds) + 1, config.rounds + 1):
        try:
            losses = run_round(model, workers, remote_data, config, loss_fn)
            result = RoundResult(r, losses, global_loss(model, remote_data, loss_fn), snapshot(model), evaluate(model))
        except BaseException as err:  # Ctrl-C too: the model may hold round r's average; put back r-1's
            model.load_state_dict(history.latest_state())
            if not isinstance(err, Exception):
                raise
            raise RoundFailed(r, err, history, getattr(err, "worker", None)) from err
        history.rounds.append(result)
        if on_round is not None:
            on_round(result, history)
    return history


def initial_model(config: FLConfig, features: int, model: nn.Module = None, history: History = None) -> nn.Module:
    """The global model a run starts from: ``nn.Linear(features, 1)`` drawn from ``config.seed`` unless
    ``model`` is given, holding the checkpoint's last round when resuming from ``history``.

    Every transport and data set builds its model here, so the same seed gives the same model everywhere.
    """
    if model is None:
        torch.manual_seed(config.seed)
        model = nn.Linear(features, 1)
    if history is not None:
        try:
            model.load_state_dict(history.latest_state())
        except RuntimeError as err:  # missing keys or shapes that do not fit the model
            raise ConfigError(f"the checkpoint's model does not fit a model of {features} features: "
                              f"{str(err).splitlines()[-1].strip()}") from None
    return model


def train_federated(config: FLConfig = FLConfig(), data: torch.Tensor = None, target: torch.Tensor = None,
                    model: nn.Module = None, loss_fn=sum_squared_error, evaluate=None, on_round=None,
                    history: History = None) -> History:
    """Run ``config.rounds`` rounds of federated learning with secure averaging on VirtualWorkers.

    ``data``/``target`` default to the seed's toy dataset, ``model`` to ``nn.Linear(features, 1)``
    initialised from ``config.seed``. A given ``model`` is updated in place; if a round fails,
    :class:`RoundFailed` is raised and the model keeps the last completed round's parameters.
    ``history`` resumes a checkpointed run: pass ``model`` holding its last round's parameters.
    """
    config = config.with_seed()
    if data is None and target is None:
        data, target = toy_dataset()
    parts = split_dataset(data, target, len(config.workers))
    model = initial_model(config, data.shape[1], model, history)
    in_features = getattr(model, "in_features", data.shape[1])
    if in_features != data.shape[1]:
        raise ConfigError(f"model expects {in_features} features but the data has {data.shape[1]} columns")

    with virtual_workers(config.workers, create_hook()) as workers:
        remote_data = send_partitions(parts, workers)
        return run_rounds(model, workers, remote_data, config, loss_fn, history=history, evaluate=evaluate,
                          on_round=on_round)
