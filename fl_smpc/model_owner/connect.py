"""How the model owner reaches the owners for owner-side training: in this process, or over mutual TLS.

* :func:`train_in_process` -- one :class:`~fl_smpc.data_owner.owner.DataOwner` per part of the data, in this
  process, reached through :class:`~fl_smpc.network.links.InProcessLink` (the wire codec included);
* :func:`train_with_owners` -- running ``fl-smpc worker`` processes at ``addresses``, one
  :class:`~fl_smpc.network.links.WebsocketLink` each (wss:// with ``certs``; ws:// on loopback only).

Both build the global model the same way (:func:`fl_smpc.federated.initial_model` semantics: the task's
model drawn right after seeding torch with ``config.seed``) and run :func:`.rounds.run_owner_rounds`.
"""

import copy
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional

import torch
from torch import nn

from ..config import (
    CONNECT_TIMEOUT,
    DEFAULT_BOUNDS,
    MODEL_PARTY,
    REPLY_TIMEOUT,
    Address,
    FLConfig,
    OwnerBounds,
    check_plaintext_hosts,
)
from ..data import split_dataset, toy_dataset
from ..data_owner.owner import MODEL, DataOwner, Link
from ..data_owner.task import Task, load_task
from ..errors import CheckpointError, ConfigError, FlSmpcError
from ..history import History, check_loss_reduction
from ..network.links import InProcessLink, WebsocketLink
from .rounds import Federation, run_owner_rounds


def task_of(model: Optional[nn.Module], loss_fn, config: FLConfig, binary_labels: bool) -> Task:
    """The task of an in-process run: the toy task, or the caller's own model and loss as a task."""
    if model is None and loss_fn is None:
        return load_task("toy")
    if model is None:
        raise ConfigError("owner-side training with your own loss_fn needs your model too (model=...)")
    check_loss_reduction(loss_fn, config)
    template = copy.deepcopy(model)
    return Task("custom", lambda _features: copy.deepcopy(template), loss_fn, config.loss_reduction, binary_labels)


def start_model(
    config: FLConfig, federation: Federation, model: Optional[nn.Module], history: Optional[History]
) -> nn.Module:
    """The global model: the given one, else the task's, drawn right after seeding torch; when resuming, it
    holds the checkpoint's last round."""
    if model is None:
        torch.manual_seed(config.seed)
        model = federation.task.build_model(federation.features)
    if history is not None:
        try:
            model.load_state_dict(history.latest_state())
        except RuntimeError as err:
            raise ConfigError(f"the checkpoint's model does not fit the task's: {str(err).splitlines()[-1]}") from None
    return model


def train_in_process(
    config: FLConfig,
    data: Optional[torch.Tensor] = None,
    target: Optional[torch.Tensor] = None,
    model: Optional[nn.Module] = None,
    loss_fn=None,
    evaluate: Optional[Callable] = None,
    on_round: Optional[Callable] = None,
    history: Optional[History] = None,
    bounds: Optional[OwnerBounds] = None,
) -> History:
    """Owner-side training with every owner in this process (``--training owner``), the network's code path."""
    config = config.with_seed().with_dp_noise()
    toy = data is None and target is None
    if toy:
        data, target = toy_dataset()
    parts = split_dataset(data, target, len(config.workers), binary_labels=toy)  # type: ignore[arg-type]
    task = task_of(model, loss_fn, config, binary_labels=toy)
    return train_parts_in_process(config, parts, task, model, evaluate, on_round, history, bounds)


def train_parts_in_process(
    config: FLConfig,
    parts,
    task: Task,
    model: Optional[nn.Module] = None,
    evaluate: Optional[Callable] = None,
    on_round: Optional[Callable] = None,
    history: Optional[History] = None,
    bounds: Optional[OwnerBounds] = None,
) -> History:
    """Owner-side training in this process, owner i holding ``parts[i]`` = (data, target) and training ``task``."""
    config = config.with_seed().with_dp_noise()
    bounds = bounds or OwnerBounds(min_owners=config.min_owners, dp=config.dp_settings())
    owners: Dict[str, DataOwner] = {}
    for name, (x, y) in zip(config.workers, parts):
        owners[name] = DataOwner(name, x, y, task, bounds)
    for name, owner in owners.items():
        owner.peers.update({peer: InProcessLink(other, name) for peer, other in owners.items() if peer != name})
    if history is not None and bounds.dp is not None:
        charge_past_rounds(owners, history, config.precision_fractional)
    links: Dict[str, Link] = {name: InProcessLink(owner, MODEL) for name, owner in owners.items()}
    federation = Federation(links, task, concurrent=False, neighbours=config.neighbours)
    federation.start()
    model = start_model(config, federation, model, history)
    return run_owner_rounds(model, federation, config, history, evaluate, on_round)


def charge_past_rounds(owners: Dict[str, DataOwner], history: History, precision: int) -> None:
    """A resumed in-process run's owners are new objects: each starts with the rounds it already released
    counted against its budget (those it contributed to, and as many as the epsilon it last reported), so
    a resumed run spends no more than an uninterrupted one would."""
    for name, owner in owners.items():
        taken = sum(name in r.contributors for r in history.rounds)
        reported = [r.epsilon[name] for r in history.rounds if name in r.epsilon]
        if not taken and not reported:
            continue
        owner._budget_for(precision)
        budget = owner.budget
        assert budget is not None  # made by _budget_for for an owner with its own DP settings
        rounds = taken
        while reported and budget.epsilon_after(rounds) < min(reported[-1] * (1 - 1e-12), budget.epsilon):
            rounds += 1  # past the budget: restore refuses below
        try:
            budget.restore(rounds)  # as a worker's ledger restores it
        except FlSmpcError as err:  # more rounds recorded than the budget allows: not this run's checkpoint
            raise CheckpointError(f"the checkpoint's rounds exceed owner {name!r}'s privacy budget: {err}") from None


@contextmanager
def owner_links(
    addresses: Dict[str, Address],
    certs: Optional[str] = None,
    party: str = MODEL_PARTY,
    timeout: float = REPLY_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> Iterator[Dict[str, WebsocketLink]]:
    """One open link per owner (mutual TLS with ``certs``: we present ``<party>.pem``); all closed on exit."""
    from ..network.tls import client_context

    if certs is None:
        check_plaintext_hosts({"--workers": [host for host, _ in addresses.values()]})
    tls = client_context(certs, party) if certs is not None else None
    links: Dict[str, WebsocketLink] = {}
    try:
        for name, (host, port) in addresses.items():
            links[name] = WebsocketLink(
                name, host, port, tls, timeout, connect_timeout, max_message=DEFAULT_BOUNDS.max_message
            )
            links[name].open()
        yield links
    finally:
        for link in links.values():
            link.close()


def train_with_owners(
    config: FLConfig,
    addresses: Dict[str, Address],
    task: str = "toy",
    model: Optional[nn.Module] = None,
    certs: Optional[str] = None,
    party: str = MODEL_PARTY,
    timeout: float = REPLY_TIMEOUT,
    connect_timeout: Optional[float] = None,
    history: Optional[History] = None,
    evaluate: Optional[Callable] = None,
    on_round: Optional[Callable] = None,
) -> History:
    """Owner-side training with running ``fl-smpc worker`` processes; returns the run's History.

    ``addresses`` maps each name of ``config.workers`` (same order) to ``(host, port)``; every worker must
    serve ``task`` (its ``--task``) with the same architecture. ``certs``/``party``: mutual TLS (the
    federation directory; we present ``<party>.pem``); without ``certs`` plain ws://, loopback only.
    ``history`` resumes a checkpointed run. A worker lost during a round is dropped from it and asked
    again before the next round (a restarted worker rejoins).
    """
    if tuple(addresses) != config.workers:
        raise ConfigError(f"addresses are given for {list(addresses)} but the config names {list(config.workers)}")
    config = config.with_seed().with_dp_noise()
    connect_timeout = min(timeout, CONNECT_TIMEOUT) if connect_timeout is None else connect_timeout
    with owner_links(addresses, certs, party, timeout, connect_timeout) as links:
        federation = Federation(dict(links), load_task(task), neighbours=config.neighbours)
        federation.start()
        model = start_model(config, federation, model, history)
        return run_owner_rounds(
            model, federation, config, history, evaluate, on_round, lambda owner: links[owner].reopen()
        )
