"""Step 3: local training on one data owner, driven through pointers (data never moves).

Any ``nn.Module`` and any loss ``loss_fn(prediction, target) -> scalar tensor`` can be trained. With
mini-batches, an owner's partition is cut into consecutive batches of ``batch_size`` rows (the last
one may be shorter) and local step ``s`` of the whole run uses batch ``s mod n_batches``: each round
continues where the previous one stopped and wraps around at the end, like iterating over a
DataLoader without shuffling. The step count alone fixes the batch, so a resumed run continues too.
"""

import copy
import functools
import math
import sys
import warnings
from typing import List, Optional

import torch
from torch import optim

from .errors import ConfigError


def sum_squared_error(prediction, target):
    """The seed's loss: a *sum* of squared errors (the seed's prose calls it a mean; it is not)."""
    return ((prediction - target) ** 2).sum()


def hooked(loss_fn):
    """The syft-hooked version of a torch function taken before the hook existed (else ``loss_fn`` itself).

    syft's hook replaces e.g. ``torch.nn.functional.mse_loss`` by a version that runs on pointers and
    keeps the original as ``native_mse_loss``. ``loss_fn=F.mse_loss`` written before the first run
    still holds the original, which on pointers computes on empty local placeholders (NaN).
    """
    if isinstance(loss_fn, functools.partial):
        return functools.partial(hooked(loss_fn.func), *loss_fn.args, **loss_fn.keywords)
    module, name = sys.modules.get(getattr(loss_fn, "__module__", None) or ""), getattr(loss_fn, "__name__", "")
    if module is not None and name and getattr(module, f"native_{name}", None) is loss_fn:
        return getattr(module, name)
    return loss_fn


def batch_slices(rows: int, batch_size: Optional[int], first_step: int, steps: int) -> List[Optional[slice]]:
    """The rows each of ``steps`` local steps uses, starting at step ``first_step`` of the run.

    ``None`` stands for the whole partition: when ``batch_size`` is None or covers every row, no
    batch is cut (one message less per step, and exactly the seed's full-batch steps).
    """
    if batch_size is None or batch_size >= rows:
        return [None] * steps
    n_batches = math.ceil(rows / batch_size)
    starts = [(s % n_batches) * batch_size for s in range(first_step, first_step + steps)]
    return [slice(start, min(start + batch_size, rows)) for start in starts]


def train_locally(
    remote_model,
    data_ptr,
    target_ptr,
    lr: float,
    steps: int,
    loss_fn=sum_squared_error,
    batch_size: Optional[int] = None,
    first_step: int = 0,
) -> float:
    """Run ``steps`` SGD steps of ``remote_model`` on the owner's data; return the last step's loss.

    ``batch_size``/``first_step`` pick each step's rows (see :func:`batch_slices`); a batch is a
    slice taken on the worker through the pointer, so the rows never leave it.
    As in the seed, the loss reported is the one computed before the final ``step()``.
    Only that scalar is fetched: the model and the data stay on the worker.
    """
    loss_fn = hooked(loss_fn)
    rows = data_ptr.shape[0] if batch_size is not None else 0
    optimizer = optim.SGD(params=remote_model.parameters(), lr=lr)
    for rows_of_step in batch_slices(rows, batch_size, first_step, steps):
        x, y = (data_ptr, target_ptr) if rows_of_step is None else (data_ptr[rows_of_step], target_ptr[rows_of_step])
        optimizer.zero_grad()
        loss = loss_fn(remote_model(x), y)
        loss.backward()
        optimizer.step()
    return loss.get().item()


def remote_loss(remote_model, data_ptr, target_ptr, loss_fn=sum_squared_error) -> float:
    """The loss of ``remote_model`` on one owner's data, computed on the worker; only the scalar returns."""
    return hooked(loss_fn)(remote_model(data_ptr), target_ptr).get().item()


def check_model(model, data: torch.Tensor, target: torch.Tensor, loss_fn=sum_squared_error) -> None:
    """Run ``model`` and ``loss_fn`` once on the first local row, before anything is sent.

    A model that does not fit the data then fails here with one line naming both shapes, not on a
    worker in round 1. It works for any module (no ``in_features`` needed). The probe runs on a copy,
    in eval mode, without gradients, and leaves torch's global generator as it was. A warning from
    the loss (e.g. ``mse_loss`` broadcasting a (1,) target against a (1, 1) output) is an error here:
    it would silently train on the wrong differences.
    """
    x, y = data[:1], target[:1]
    probe = copy.deepcopy(model).eval()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        try:
            output = probe(x)
        except Exception as err:
            raise ConfigError(
                f"model does not accept data rows of shape {tuple(data.shape[1:])}: its forward on "
                f"an input of shape {tuple(x.shape)} fails with: {_first_line(err)}"
            ) from None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                loss = loss_fn(output, y)
            except Exception as err:  # the warnings above land here too
                hint = ""
                if isinstance(output, torch.Tensor) and output.dim() == 2 and y.dim() == 1 == output.shape[1]:
                    hint = "; give the target as target.view(-1, 1), the (rows, 1) shape of the model's output"
                raise ConfigError(
                    f"loss_fn cannot compare the model's output of shape {_shape(output)} with a target "
                    f"of shape {tuple(y.shape)}: {_first_line(err).rstrip('.') if hint else _first_line(err)}{hint}"
                ) from None
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ConfigError(f"loss_fn must return a scalar tensor; for one row it returned {_shape(loss)}")


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _shape(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__
