"""What a data owner trains: the model family, the loss, and how its rows are read -- the owner's choice.

As Flower's ``task.py``: the code that touches the data lives with the data. The model owner names a task
and the fingerprint of its architecture (parameter names and shapes); an owner refuses a mismatch. Built-in
tasks:

* ``toy`` -- the tutorial's ``nn.Linear(features, 1)`` with summed squared error, 0/1 labels;
* ``sms`` -- logistic regression on hashed SMS features: ``nn.Linear(features, 1)``, mean BCE with logits;
* ``mlp-regression`` / ``mlp-classification`` -- ``Linear(f, 32) - ReLU - Linear(32, 1)``, mean squared error
  on float targets / mean BCE with logits on 0/1 labels, for any CSV.

A user's own task is a Python module (``--task my_task.py`` or ``--task package.module``) that defines
``build_model(features) -> nn.Module`` and ``loss_fn(prediction, target)``, and optionally
``reduction = "sum" | "mean"`` (default "mean"), ``binary_labels`` (default False), ``outputs`` and
``read_data(path) -> (data, target)`` (default: the worker CSV format) and ``metrics(output, target) -> dict``
with the names in ``metric_names``.
"""

import functools
import hashlib
import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..training import sum_squared_error

BUILTIN_TASKS = ("toy", "sms", "mlp-regression", "mlp-classification")
ACC = ("accuracy",)


def mean_bce_with_logits(logits, target):
    """Logistic loss averaged over an owner's rows.

    A mean (not a sum) keeps the step size independent of how many messages an owner holds, so one
    learning rate fits every owner and the pooled baseline; the global loss is the mean over all owners'
    messages (``loss_reduction="mean"``).
    """
    return F.binary_cross_entropy_with_logits(logits, target)


def logit_accuracy(logits, target) -> dict:
    """Share of rows whose logit falls on the side of their 0/1 label (a mean over the rows)."""
    return {"accuracy": float(((logits > 0).float() == target).float().mean().item())}


def mlp(features: int, hidden: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1))


@dataclass(frozen=True)
class Task:
    """A model family, its loss and its data format. ``reduction`` says how ``loss_fn`` reduces over rows."""

    name: str
    build_model: Callable[[int], nn.Module]
    loss_fn: Callable
    reduction: str = "mean"
    binary_labels: bool = False
    load_data: Optional[Callable[[str], Tuple[torch.Tensor, torch.Tensor]]] = None
    # metrics(output, target) -> {name: mean over the rows}; averaged over the owners inside the secure sum
    metrics: Optional[Callable[..., Dict[str, float]]] = None
    metric_names: Tuple[str, ...] = ()

    def read(self, path: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """The owner's (data, target) from ``path``: the task's own loader, else the worker CSV format."""
        if self.load_data is not None:
            return self.load_data(path)
        from ..network.csvdata import read_csv

        return read_csv(path, binary_labels=self.binary_labels)


def builtin_task(name: str) -> Task:
    if name == "toy":
        return Task("toy", lambda f: nn.Linear(f, 1), sum_squared_error, "sum", binary_labels=True)
    if name == "sms":
        from ..sms.corpus import owner_messages

        return Task(
            "sms", lambda f: nn.Linear(f, 1), mean_bce_with_logits, "mean", True, owner_messages, logit_accuracy, ACC
        )
    if name == "mlp-regression":
        return Task(name, mlp, F.mse_loss, "mean")
    if name == "mlp-classification":
        return Task(name, mlp, mean_bce_with_logits, "mean", True, None, logit_accuracy, ACC)
    raise ConfigError(f"task: unknown task {name!r}; built-ins are {', '.join(BUILTIN_TASKS)}, or a Python module")


@functools.lru_cache(maxsize=None)
def load_task(name: str) -> Task:
    """A built-in task by name, or a user's task module (a ``.py`` path or an importable module name)."""
    if name in BUILTIN_TASKS:
        return builtin_task(name)
    try:
        if name.endswith(".py"):
            if not os.path.isfile(name):
                raise ConfigError(f"task: {name}: no such file")
            spec = importlib.util.spec_from_file_location(
                f"fl_smpc_task_{hashlib.sha1(name.encode()).hexdigest()}", name
            )
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(name)
    except ConfigError:
        raise
    except Exception as err:  # the user's module failed to import: say which and why, in one line
        raise ConfigError(f"task: cannot load {name!r}: {type(err).__name__}: {err}") from None
    missing = [attr for attr in ("build_model", "loss_fn") if not callable(getattr(module, attr, None))]
    if missing:
        raise ConfigError(f"task: module {name!r} must define {' and '.join(missing)}")
    reduction = getattr(module, "reduction", "mean")
    if reduction not in ("sum", "mean"):
        raise ConfigError(f"task: {name!r}.reduction must be 'sum' or 'mean', got {reduction!r}")
    return Task(
        os.path.splitext(os.path.basename(name))[0] if name.endswith(".py") else name,
        module.build_model,
        module.loss_fn,
        reduction,
        bool(getattr(module, "binary_labels", False)),
        getattr(module, "read_data", None),
        getattr(module, "metrics", None),
        tuple(getattr(module, "metric_names", ())),
    )


def fingerprint(task_name: str, model: nn.Module) -> str:
    """SHA-256 of the task name and the model's parameter names and shapes: what both sides must agree on."""
    layout = [(name, list(p.shape)) for name, p in model.named_parameters()]
    return hashlib.sha256(repr((task_name, layout)).encode()).hexdigest()[:32]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
