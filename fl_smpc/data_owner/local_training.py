"""A data owner's local training: plain PyTorch on its own rows, from the global parameters it was sent.

The same SGD as the tutorial's step 3 (zero_grad, forward, loss, backward, step), with the same batch
schedule (:func:`fl_smpc.training.batch_slices`: local step ``s`` of the run uses batch ``s mod n_batches``),
but run by the owner's own code on its own tensors: nothing is driven through pointers.
"""

from typing import Dict, Optional, Tuple

import torch
from torch import nn, optim
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from ..training import batch_slices
from .task import Task


def load_parameters(model: nn.Module, flat: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        vector_to_parameters(flat.to(torch.float32), model.parameters())
    return model


def train_steps(
    model: nn.Module,
    data: torch.Tensor,
    target: torch.Tensor,
    task: Task,
    lr: float,
    steps: int,
    batch_size: Optional[int],
    first_step: int,
) -> Tuple[torch.Tensor, float]:
    """``steps`` SGD steps on the owner's rows; the trained parameters (flat) and the last step's loss."""
    optimizer = optim.SGD(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(float("nan"))
    for rows in batch_slices(data.shape[0], batch_size, first_step, steps):
        x, y = (data, target) if rows is None else (data[rows], target[rows])
        optimizer.zero_grad()
        loss = task.loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    return parameters_to_vector(model.parameters()).detach(), float(loss.item())


def evaluate_rows(model: nn.Module, data: torch.Tensor, target: torch.Tensor, task: Task) -> Tuple[float, Dict]:
    """The loss of ``model`` on all of the owner's rows (reduced as the task says) and the task's metrics."""
    model.eval()
    with torch.no_grad():
        output = model(data)
        loss = float(task.loss_fn(output, target).item())
        metrics = task.metrics(output, target) if task.metrics is not None else {}
    return loss, metrics
