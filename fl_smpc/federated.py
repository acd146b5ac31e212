"""Step 5: the round loop -- send the global model, train locally, securely average, update.

Returns a :class:`History`; printing is left to the CLI.
"""

import contextlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils import vector_to_parameters

from .config import FLConfig
from .data import send_partitions, split_dataset, toy_dataset
from .errors import AggregationError, ConfigError, FlSmpcError, OwnerFailed, RoundFailed
from .history import (  # noqa: F401  # History and RoundResult stay importable from here
    History,
    RoundResult,
    check_loss_reduction,
    declared_reduction,
    owners_of_round,
    snapshot,
    state_to_lists,
)
from .pairwise import pairwise_average
from .secure_aggregation import secure_average
from .training import check_model, remote_loss, sum_squared_error, train_locally
from .workers import create_hook, forget_transient_ids, virtual_workers


def global_loss(
    model: nn.Module, remote_data: Sequence[Tuple], loss_fn=sum_squared_error, reduction: str = "sum"
) -> float:
    """Loss of the global model on all owners' data, combined from per-owner losses computed remotely.

    ``reduction`` says how ``loss_fn`` reduces over rows. Summed losses add up to the loss on all
    rows. Mean losses are weighted by each owner's row count (known to the model owner from the
    pointers' shapes), which gives the mean over all rows, as on the pooled data; an unweighted sum or
    mean of the owners' means would not.
    """
    losses = []
    with forget_transient_ids([ptr.location for ptr, _ in remote_data]):
        for data_ptr, target_ptr in remote_data:  # the copy is freed as soon as its loss is back
            # syft's hook adds Module.copy
            losses.append(remote_loss(model.copy().send(data_ptr.location), data_ptr, target_ptr, loss_fn))  # type: ignore[operator]
    if reduction == "mean":
        rows = [data_ptr.shape[0] for data_ptr, _ in remote_data]
        return sum(n * loss for n, loss in zip(rows, losses)) / sum(rows)
    return sum(losses)


@dataclass
class RoundOutcome:
    """What :func:`run_round` reports: local losses, who is in the average, who was dropped and why."""

    worker_losses: Dict[str, float]
    contributors: List[str]
    dropped: Dict[str, str]


def _enough(
    alive: List[int], workers: Sequence, dropped: Dict[str, str], first_error: Optional[Exception], config: FLConfig
) -> None:
    if len(alive) < config.min_owners:
        left = ", ".join(workers[i].id for i in alive) or "none"
        raise RoundFailedEarly(
            f"{'; '.join(dropped.values())}; {len(alive)} owners left ({left}), fewer than "
            f"min_owners {config.min_owners}",
            next(iter(dropped), None),
        ) from first_error


class RoundFailedEarly(RuntimeError):
    """Too few owners remain for a secure sum; ``worker`` is the first dropped one."""

    def __init__(self, message: str, worker: Optional[str]):
        super().__init__(message)
        self.worker = worker


def run_round(
    model: nn.Module,
    workers: Sequence,
    remote_data: Sequence[Tuple],
    config: FLConfig,
    loss_fn=sum_squared_error,
    round_number: int = 1,
) -> RoundOutcome:
    """One round, in place on ``model``; the model is only written once the secure average succeeded.

    An owner that fails before the reveal begins (while training, while its parameters are checked, or
    while shares are made) is dropped from the round: every share made so far is discarded and the
    average is redone with fresh masks among the others, as long as ``config.min_owners`` remain. The
    reveal itself is all or nothing (a failure there fails the round), so the model owner never sees two
    sums of one round over different sets of owners.
    ``round_number`` (from 1) picks each owner's batches when ``config.batch_size`` is set: round r
    starts at local step ``(r - 1) * config.local_steps`` of the owner's batch cycle.
    """
    first_step = (round_number - 1) * config.local_steps
    dropped: Dict[str, str] = {}
    first_error: Optional[Exception] = None
    losses: Dict[str, float] = {}
    with forget_transient_ids(workers):
        remote_models = {}
        for i in owners_of_round(config, round_number):
            worker, (x, y) = workers[i], remote_data[i]
            try:
                remote_models[i] = model.copy().send(worker)  # type: ignore[operator]  # syft's hook adds Module.copy
                losses[worker.id] = train_locally(
                    remote_models[i], x, y, config.lr, config.local_steps, loss_fn, config.batch_size, first_step
                )
            except Exception as err:  # an unreachable owner, a timeout, an error on the owner
                first_error = first_error or err
                remote_models.pop(i, None)
                dropped[worker.id] = f"{err if isinstance(err, FlSmpcError) else repr(err)} (during training)"
        while True:
            alive = sorted(remote_models)
            _enough(alive, workers, dropped, first_error, config)
            weights = [float(remote_data[i][0].shape[0]) if config.weighting == "samples" else 1.0 for i in alive]
            try:
                aggregate = pairwise_average if config.aggregation == "pairwise" else secure_average
                average = aggregate(
                    [remote_models[i] for i in alive], [workers[i] for i in alive], config.precision_fractional, weights
                )
                break
            except (OwnerFailed, AggregationError) as err:  # before the reveal: drop it, redo with fresh shares
                stage, cause = (err.stage, err.cause) if isinstance(err, OwnerFailed) else ("check", err)
                index = next((i for i in alive if workers[i].id == err.worker), None)
                if index is None:  # blamed on an owner outside this attempt: nothing to drop, fail the round
                    raise
                first_error = first_error or cause
                del remote_models[index]
                losses.pop(err.worker, None)
                dropped[err.worker] = f"{cause} (during {stage})"
        del remote_models  # frees the copies on the workers now, before their ids are released
        with torch.no_grad():
            vector_to_parameters(average, model.parameters())
    return RoundOutcome(losses, [workers[i].id for i in alive], dropped)


def run_rounds(
    model: nn.Module,
    workers: Sequence,
    remote_data: Sequence[Tuple],
    config: FLConfig,
    loss_fn=sum_squared_error,
    history: Optional[History] = None,
    evaluate=None,
    on_round=None,
    reconnect=None,
) -> History:
    """The round loop over already connected workers holding ``remote_data`` (any syft transport).

    ``remote_data`` holds one ``(data_ptr, target_ptr)`` pair per worker, in the order of ``workers``.
    ``loss_fn(prediction, target)`` returns a scalar reduced as ``config.loss_reduction`` says.
    ``evaluate(model) -> dict`` adds metrics to every round (e.g. on a held-out test set);
    ``on_round(result, history)`` is called after each completed round (progress bars, checkpoints).
    ``reconnect(index) -> (worker, (data_ptr, target_ptr))`` is called before a round for each owner
    dropped in the previous one (network mode: a restarted worker rejoins); it may raise to stay out.
    Pass a ``history`` to resume: rounds continue after its last completed one (and so do the batches).
    """
    check_loss_reduction(loss_fn, config)
    evaluate = evaluate or (lambda _model: {})
    workers, remote_data = list(workers), list(remote_data)
    if history is None:
        history = History(
            config,
            snapshot(model),
            global_loss(model, remote_data, loss_fn, config.loss_reduction),
            initial_metrics=evaluate(model),
        )
    dropped: Dict[str, str] = {}
    for r in range(len(history.rounds) + 1, config.rounds + 1):
        if reconnect is not None:
            for i, worker in enumerate(workers):
                if worker.id in dropped:
                    with contextlib.suppress(Exception):  # still away: it will be dropped again this round
                        workers[i], remote_data[i] = reconnect(i)
        try:
            outcome = run_round(model, workers, remote_data, config, loss_fn, r)
            dropped = outcome.dropped
            reachable = [d for w, d in zip(workers, remote_data) if w.id not in dropped]
            result = RoundResult(
                r,
                outcome.worker_losses,
                global_loss(model, reachable, loss_fn, config.loss_reduction),
                snapshot(model),
                evaluate(model),
                outcome.contributors,
                outcome.dropped,
            )
        except BaseException as err:  # Ctrl-C too: the model may hold round r's average; put back r-1's
            model.load_state_dict(history.latest_state())
            if not isinstance(err, Exception):
                raise
            raise RoundFailed(r, err, history, getattr(err, "worker", None)) from err
        history.rounds.append(result)
        if on_round is not None:
            on_round(result, history)
    return history


def initial_model(
    config: FLConfig,
    features: int,
    model: Optional[nn.Module] = None,
    history: Optional[History] = None,
    outputs: int = 1,
) -> nn.Module:
    """The global model a run starts from: ``nn.Linear(features, outputs)`` drawn from ``config.seed``
    unless ``model`` is given (then torch's generator is left alone), holding the checkpoint's last
    round when resuming from ``history``.

    Every transport and data set builds its model here, so the same seed gives the same model everywhere.
    """
    if model is None:
        torch.manual_seed(config.seed)
        model = nn.Linear(features, outputs)
    if history is not None:
        try:
            model.load_state_dict(history.latest_state())
        except RuntimeError as err:  # missing keys or shapes that do not fit the model
            raise ConfigError(
                f"the checkpoint's model does not fit a model of {features} features: "
                f"{str(err).splitlines()[-1].strip()}"
            ) from None
    return model


def prepare_run(
    config: FLConfig,
    data: Optional[torch.Tensor],
    target: Optional[torch.Tensor],
    model: Optional[nn.Module],
    loss_fn,
    history: Optional[History] = None,
) -> Tuple[FLConfig, List[Tuple[torch.Tensor, torch.Tensor]], nn.Module]:
    """What an in-process run starts from: the config with its seed, each owner's rows, the checked model.

    Shared by :func:`train_federated` and :func:`fl_smpc.reference.plaintext_fedavg`, so both split the
    data, build (or take) the model and refuse a bad one the same way.
    """
    config = config.with_seed()
    toy = data is None and target is None
    if toy:
        data, target = toy_dataset()
    # split_dataset refuses a missing data or target with one line
    parts = split_dataset(data, target, len(config.workers), binary_labels=toy)  # type: ignore[arg-type]
    assert data is not None and target is not None
    outputs = target.shape[1] if target.dim() == 2 else 1
    model = initial_model(config, data.shape[1], model, history, outputs)
    check_model(model, *parts[0], loss_fn)
    return config, parts, model


def train_federated(
    config: FLConfig = FLConfig(),
    data: Optional[torch.Tensor] = None,
    target: Optional[torch.Tensor] = None,
    model: Optional[nn.Module] = None,
    loss_fn=sum_squared_error,
    evaluate=None,
    on_round=None,
    history: Optional[History] = None,
) -> History:
    """Run ``config.rounds`` rounds of federated learning with secure averaging on VirtualWorkers.

    ``data``/``target`` default to the seed's toy dataset (0/1 labels); given ones may hold any finite
    targets (regression too). ``model`` defaults to ``nn.Linear(features, outputs)`` initialised after
    seeding torch's global generator with ``config.seed``; a given model is used as it is, the
    generator left alone, and is updated in place. Before anything is sent, the model and ``loss_fn``
    run once on one row, so a model that does not fit the data is refused with one line.
    If a round fails, :class:`RoundFailed` is raised and the model keeps the last completed round's
    parameters. ``history`` resumes a checkpointed run from its last round's parameters.
    With ``config.training == "owner"`` each owner trains with its own code in this process and releases
    only its contribution (:func:`fl_smpc.model_owner.connect.train_in_process`, the network's code path).
    See docs/api.md for every parameter.
    """
    if config.training == "owner":
        from .model_owner.connect import train_in_process

        return train_in_process(
            config, data, target, model, None if model is None else loss_fn, evaluate, on_round, history
        )
    config, parts, model = prepare_run(config, data, target, model, loss_fn, history)
    with virtual_workers(config.workers, create_hook()) as workers:
        remote_data = send_partitions(parts, workers)
        return run_rounds(
            model, workers, remote_data, config, loss_fn, history=history, evaluate=evaluate, on_round=on_round
        )
