"""The SMS spam experiment: the foundation's secure federated loop on real messages, with baselines.

Each owner featurises its own messages (stateless hashing, no shared vocabulary). In this
in-process simulation the model owner then sends the owners their tensors, as with the toy data;
in a deployment each owner would build them on its own machine with the same call.

Returns an :class:`SmsResult`; printing is left to the CLI.
"""

import time
from dataclasses import dataclass, field, replace
from typing import List

import torch
from torch import nn, optim

from ..config import SMS_DEFAULTS, SMS_SPLIT_SEED, SMS_TEST_FRACTION, RunSpec
from ..data import send_partitions
from ..data_owner.task import mean_bce_with_logits
from ..errors import ConfigError
from ..federated import initial_model, run_rounds
from ..training import sum_squared_error
from ..workers import create_hook, virtual_workers
from .corpus import (
    Messages,
    deduplicate,
    featurize,
    labels_tensor,
    load_data_file,
    load_packaged_corpus,
    partition,
    spam_metrics,
    train_test_split,
)

# name -> (loss function, decision threshold on the model's output)
LOSSES = {"bce": (mean_bce_with_logits, 0.0), "sse": (sum_squared_error, 0.5)}


@dataclass
class PreparedData:
    """The held-out test set, each owner's training messages, and counts for the report."""

    owners: List[Messages]
    train: Messages  # all owners' messages pooled, in corpus order (the centralized baseline's data)
    test: Messages
    info: dict = field(default_factory=dict)


def prepare_data(
    messages: Messages,
    n_owners: int,
    scheme: str = "iid",
    test_fraction: float = SMS_TEST_FRACTION,
    seed: int = SMS_SPLIT_SEED,
) -> PreparedData:
    """De-duplicate, hold out a stratified test set, and partition the rest across the owners."""
    unique, removed = deduplicate(messages)
    train, test = train_test_split(unique, test_fraction, seed)
    owners = [train.subset(ids) for ids in partition(train.labels, n_owners, scheme, seed)]
    info = {
        "source": messages.source,
        "messages": len(messages),
        "duplicates_removed": removed,
        "train": len(train),
        "test": len(test),
        "test_spam": sum(test.labels),
        "owners": [{"messages": len(o), "spam": sum(o.labels), "spam_rate": round(o.spam_rate, 4)} for o in owners],
    }
    return PreparedData(owners, train, test, info)


def evaluator(test: Messages, n_features: int, threshold: float):
    """``evaluate(model) -> metrics`` on the held-out test set, held by the model owner in plaintext."""
    x, y = featurize(test.texts, n_features), list(test.labels)

    def evaluate(model: nn.Module) -> dict:
        with torch.no_grad():
            predicted = (model(x).view(-1) > threshold).long().tolist()
        return spam_metrics(y, predicted)

    return evaluate


def train_centralized(
    model: nn.Linear, data: torch.Tensor, target: torch.Tensor, lr: float, steps: int, loss_fn
) -> nn.Linear:
    """Plain full-batch SGD on the pooled data (no workers, no sharing): the baseline to match.

    ``data`` may be a sparse tensor: hashed rows are > 99 % zeros, and the same linear map computed
    with ``torch.sparse.mm`` is ~10x faster than the dense product (same maths, other rounding).
    """

    def forward():
        # torch 1.4's stubs lack torch.sparse and Tensor.is_sparse
        return torch.sparse.mm(data, model.weight.t()) + model.bias if data.is_sparse else model(data)  # type: ignore[attr-defined]

    optimizer = optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(forward(), target).backward()
        optimizer.step()
    return model


def run_sms(spec: RunSpec, on_round=None):
    """Secure federated training on SMS messages, then the centralized and always-ham baselines.

    Returns ``(history, dataset description, baselines, seconds of federated training)``; called by
    :func:`fl_smpc.runner.run`, which handles seeds, checkpoints and printing.
    The centralized model starts from the same initial parameters and takes ``rounds * local_steps``
    full-batch steps on the pooled training data: per step it computes gradients on as many messages
    as all owners together do in one of their local steps, so both see the same total gradient work.
    """
    n_features = spec.features
    loss_fn, threshold = LOSSES[spec.loss]
    # bce is a mean over an owner's messages: the global loss is then the mean over all owners' messages
    config = replace(spec.config, loss_reduction="mean" if spec.loss == "bce" else "sum")
    messages = load_data_file(spec.data_file) if spec.data_file else load_packaged_corpus()
    prepared = prepare_data(messages, len(config.workers), spec.partition)
    evaluate = evaluator(prepared.test, n_features, threshold)
    model = initial_model(config, n_features)
    start_state = {k: v.clone() for k, v in model.state_dict().items()}

    started = time.perf_counter()
    # Each owner featurises only its own messages; then (simulation only) they are sent to it.
    parts = [(featurize(o.texts, n_features), labels_tensor(o)) for o in prepared.owners]
    if config.training == "owner":  # each owner trains the sms task with its own code (the network's path)
        from ..data_owner.task import load_task
        from ..model_owner.connect import train_parts_in_process

        if spec.loss != "bce":
            raise ConfigError("owner-side training of the sms task uses its loss, bce (the mean logistic loss)")
        history = train_parts_in_process(config, parts, load_task("sms"), model, evaluate, on_round)
    else:
        with virtual_workers(config.workers, create_hook()) as workers:
            remote_data = send_partitions(parts, workers)
            history = run_rounds(model, workers, remote_data, config, loss_fn, evaluate=evaluate, on_round=on_round)
    seconds = time.perf_counter() - started

    # With DP the comparison is the non-private centralized model of `fl-smpc --dataset sms` (DP-FedSGD's few
    # large steps, taken without noise or clipping, would diverge and compare nothing).
    private = config.dp is not None
    lr = SMS_DEFAULTS["lr"][spec.loss] if private else config.lr
    steps = SMS_DEFAULTS["rounds"] * SMS_DEFAULTS["local_steps"] if private else config.rounds * config.local_steps
    started = time.perf_counter()
    central = nn.Linear(n_features, 1)
    central.load_state_dict(start_state)
    pooled = prepared.train
    train_centralized(
        central, featurize(pooled.texts, n_features).to_sparse(), labels_tensor(pooled), lr, steps, loss_fn
    )
    baseline = {
        "centralized": {**evaluate(central), "steps": steps, "lr": lr, "seconds": time.perf_counter() - started},
        "always_ham": spam_metrics(list(prepared.test.labels), [0] * len(prepared.test)),
    }
    return history, prepared.info, baseline, seconds
