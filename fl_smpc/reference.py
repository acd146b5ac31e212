"""Plain-PyTorch FedAvg, no syft: what the secure implementation is checked against.

The same algorithm as :func:`fl_smpc.federated.run_rounds` on local tensors: every round each owner
copies the global model, takes ``steps`` SGD steps on its own rows (the next mini-batches when
``batch_size`` is set), and the global model becomes the mean of the owners' parameters weighted by
their numbers of rows (FedAvg; ``weighting="equal"``: the plain mean).
The batches are cut here with ``torch.split``, independently of :mod:`fl_smpc.training`, so a test
comparing both also checks the batch schedule.
"""

import copy
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn, optim
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from .config import FLConfig
from .training import sum_squared_error

sse = sum_squared_error  # the short name the tests have always used


class ReferenceRound(NamedTuple):
    """One plaintext round: each owner's last local loss, the loss on the pooled data, the averaged parameters."""

    worker_losses: List[float]
    global_loss: float
    params: torch.Tensor  # flat, ``parameters_to_vector`` order
    metrics: Dict[str, float]


def local_train(
    model: nn.Module,
    data: torch.Tensor,
    target: torch.Tensor,
    lr: float,
    steps: int,
    loss_fn=sum_squared_error,
    batch_size: Optional[int] = None,
    first_step: int = 0,
) -> float:
    """``steps`` SGD steps (zero_grad, forward, loss, backward, step); return the last step's loss.

    Without ``batch_size`` every step uses all rows. With it, step ``s`` (counted over the whole
    run, from ``first_step``) uses batch ``s mod n_batches`` of ``torch.split(rows, batch_size)``.
    """
    batches = [(data, target)]
    if batch_size:
        batches = list(zip(torch.split(data, batch_size), torch.split(target, batch_size)))
    opt = optim.SGD(model.parameters(), lr=lr)
    for step in range(first_step, first_step + steps):
        x, y = batches[step % len(batches)]
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    return loss.item()


def pooled_loss(
    model: nn.Module, parts: Sequence[Tuple[torch.Tensor, torch.Tensor]], loss_fn=sum_squared_error
) -> float:
    """``loss_fn`` on all owners' rows concatenated: the global loss by definition, for any reduction."""
    with torch.no_grad():
        loss = loss_fn(model(torch.cat([x for x, _ in parts])), torch.cat([y for _, y in parts]))
    return loss.item()


def fedavg_rounds(
    model: nn.Module,
    parts: Sequence[Tuple[torch.Tensor, torch.Tensor]],
    rounds: int,
    lr: float,
    steps: int,
    loss_fn=sum_squared_error,
    batch_size: Optional[int] = None,
    evaluate: Optional[Callable[[nn.Module], dict]] = None,
    rounds_done: int = 0,
    weighting: str = "samples",
) -> List[ReferenceRound]:
    """The low-level reference: one :class:`ReferenceRound` per round; ``model`` is updated in place.

    ``parts`` holds each owner's ``(data, target)``; ``evaluate(model) -> dict`` gives each round's metrics.
    ``rounds_done`` continues a run after that many rounds (the batches pick up where they were), so a
    single round of a secure run can be replayed from its starting model.
    """
    history = []
    for r in range(rounds_done, rounds_done + rounds):
        local = [copy.deepcopy(model) for _ in parts]
        losses = [local_train(m, x, y, lr, steps, loss_fn, batch_size, r * steps) for m, (x, y) in zip(local, parts)]
        mean = weighted_mean(local, [len(x) for x, _ in parts], weighting)
        with torch.no_grad():
            vector_to_parameters(mean, model.parameters())
        metrics = evaluate(model) if evaluate else {}
        history.append(ReferenceRound(losses, pooled_loss(model, parts, loss_fn), mean.detach().clone(), metrics))
    return history


def weighted_mean(models: Sequence[nn.Module], rows: Sequence[int], weighting: str = "samples") -> torch.Tensor:
    """FedAvg of the models' flat parameters: weighted by ``rows`` (``"samples"``) or a plain mean (``"equal"``)."""
    weights = torch.tensor([float(n) if weighting == "samples" else 1.0 for n in rows])
    stacked = torch.stack([parameters_to_vector(m.parameters()) for m in models])
    return (stacked * weights[:, None]).sum(0) / weights.sum()


def plaintext_fedavg(
    config: FLConfig = FLConfig(),
    data: Optional[torch.Tensor] = None,
    target: Optional[torch.Tensor] = None,
    model: Optional[nn.Module] = None,
    loss_fn=sum_squared_error,
    evaluate: Optional[Callable[[nn.Module], dict]] = None,
):
    """The run :func:`fl_smpc.federated.train_federated` makes, in plain PyTorch: same arguments, same History.

    ``config`` (an :class:`~fl_smpc.config.FLConfig`), ``data``, ``target``, ``model``, ``loss_fn`` and
    ``evaluate`` mean what they mean there: the rows are split the same way, the default model is drawn
    from ``config.seed`` the same way, a given model is refused the same way. Unlike ``train_federated``,
    the caller's model is left untouched (the run trains a deep copy), so one model can start both runs.
    Every setting of ``config`` applies (rounds, local steps, lr, batches, weighting, owners per round,
    loss reduction); ``precision_fractional`` and ``aggregation`` do not, since nothing is encoded.
    Returns a :class:`~fl_smpc.federated.History`; compare two with :func:`max_differences`.
    The low-level form on owners' parts, in place, is :func:`fedavg_rounds`.
    """
    if isinstance(config, nn.Module):
        raise TypeError(
            "plaintext_fedavg takes (config, data, target, model=..., loss_fn=..., evaluate=...) like "
            "train_federated; the form (model, parts, rounds, lr, steps, ...) is now fedavg_rounds"
        )
    from .federated import History, RoundResult, owners_of_round, prepare_run, snapshot

    config, parts, model = prepare_run(config, data, target, copy.deepcopy(model), loss_fn)
    evaluate = evaluate or (lambda _model: {})
    history = History(config, snapshot(model), pooled_loss(model, parts, loss_fn), initial_metrics=evaluate(model))
    for r in range(1, config.rounds + 1):
        chosen = owners_of_round(config, r)
        local = [copy.deepcopy(model) for _ in chosen]
        losses = {}
        for m, i in zip(local, chosen):
            x, y = parts[i]
            first_step = (r - 1) * config.local_steps
            losses[config.workers[i]] = local_train(
                m, x, y, config.lr, config.local_steps, loss_fn, config.batch_size, first_step
            )
        mean = weighted_mean(local, [len(parts[i][0]) for i in chosen], config.weighting)
        with torch.no_grad():
            vector_to_parameters(mean, model.parameters())
        contributors = [config.workers[i] for i in chosen]
        result = RoundResult(
            r, losses, pooled_loss(model, parts, loss_fn), snapshot(model), evaluate(model), contributors, {}
        )
        history.rounds.append(result)
    return history


def max_differences(a, b) -> List[float]:
    """Per round, the largest absolute parameter difference between two Histories (e.g. secure vs plaintext)."""
    return [
        max((ra.model[name] - rb.model[name]).abs().max().item() for name in ra.model)
        for ra, rb in zip(a.rounds, b.rounds)
    ]


def seed_model(seed: int, in_features: int = 3) -> nn.Linear:
    """``nn.Linear(in_features, 1)`` drawn right after seeding torch, as the package's default model is."""
    torch.manual_seed(seed)
    return nn.Linear(in_features, 1)
