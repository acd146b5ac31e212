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


def plaintext_fedavg(
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
    """Return one :class:`ReferenceRound` per round; ``model`` is updated in place.

    ``parts`` holds each owner's ``(data, target)``; ``evaluate(model) -> dict`` gives each round's metrics.
    ``rounds_done`` continues a run after that many rounds (the batches pick up where they were), so a
    single round of a secure run can be replayed from its starting model.
    """
    history = []
    for r in range(rounds_done, rounds_done + rounds):
        local = [copy.deepcopy(model) for _ in parts]
        losses = [local_train(m, x, y, lr, steps, loss_fn, batch_size, r * steps) for m, (x, y) in zip(local, parts)]
        weights = torch.tensor([float(len(x)) if weighting == "samples" else 1.0 for x, _ in parts])
        stacked = torch.stack([parameters_to_vector(m.parameters()) for m in local])
        mean = (stacked * weights[:, None]).sum(0) / weights.sum()
        with torch.no_grad():
            vector_to_parameters(mean, model.parameters())
        metrics = evaluate(model) if evaluate else {}
        history.append(ReferenceRound(losses, pooled_loss(model, parts, loss_fn), mean.detach().clone(), metrics))
    return history


def seed_model(seed: int, in_features: int = 3) -> nn.Linear:
    """``nn.Linear(in_features, 1)`` drawn right after seeding torch, as the package's default model is."""
    torch.manual_seed(seed)
    return nn.Linear(in_features, 1)
