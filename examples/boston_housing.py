"""PySyft tutorial Part 10 (federated learning with encrypted aggregation, Boston housing) through fl_smpc.

As in Part 10: Boston housing prices, standardised features (the 0/1 CHAS column left as it is), an
MLP 13-32-24-1, two owners (bob and alice), batches of 8, SGD with lr 0.001, ``F.mse_loss``, and the
owners' models averaged securely after every batch. Unlike Part 10, a test set is held out (Part 10
tests on its training data) and each owner shares its own parameters (no crypto provider needed).
The same run in plain PyTorch (``fl_smpc.reference.plaintext_fedavg``) is printed alongside.

This file is also the owners' *task* for the network run (``fl-smpc worker --task examples/boston_housing.py``):
``build_model``, ``loss_fn`` and ``reduction`` below are what each owner trains with its own code.

    python examples/boston_housing.py --epochs 10 --seed 0
    python examples/boston_housing.py --transport websocket   # 2 worker processes over mutual TLS
"""

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fl_smpc import FLConfig, FlSmpcError, max_differences, plaintext_fedavg, split_dataset, train_federated

OWNERS = ("bob", "alice")
BATCH_SIZE = 8
LR = 0.001
TEST_FRACTION = 0.2
PRECISION = 3  # fix_precision()'s default, as in Part 10
CHAS = 3  # the Charles-river dummy: Part 10 leaves this 0/1 column unscaled


class Net(nn.Module):
    """Part 10's model: 13 features -> 32 -> 24 -> 1 price, ReLU between the layers."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(13, 32), nn.Linear(32, 24), nn.Linear(24, 1)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


# --- the task the owners train (owner-side training: fl_smpc.data_owner.task loads these names) ---
reduction = "mean"
loss_fn = F.mse_loss


def build_model(features: int) -> nn.Module:
    return Net()


def load_data(seed: int) -> Tuple[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """(train, test) pairs of (features, prices as (rows, 1)), shuffled by ``seed``, scaled by training statistics."""
    from sklearn.datasets import load_boston

    boston = load_boston()
    x = torch.tensor(boston.data, dtype=torch.float32)
    y = torch.tensor(boston.target, dtype=torch.float32).view(-1, 1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))  # type: ignore[attr-defined]  # torch 1.4's stubs
    x, y = x[order], y[order]
    n_test = round(len(x) * TEST_FRACTION)
    x_train, y_train, x_test, y_test = x[n_test:], y[n_test:], x[:n_test], y[:n_test]
    mean, std = x_train.mean(0), x_train.std(0)
    mean[CHAS], std[CHAS] = 0.0, 1.0
    return ((x_train - mean) / std, y_train), ((x_test - mean) / std, y_test)


def part10_config(
    epochs: int, seed: int, rows_per_owner: List[int], precision: int = PRECISION, **settings
) -> FLConfig:
    """One round per batch (Part 10 averages after every batch), so an epoch is the largest owner's batch count.

    Two owners, as in Part 10: ``min_owners=2`` accepts knowingly that each owner can derive the
    other's model from the average.
    """
    batches_per_epoch = max(math.ceil(rows / BATCH_SIZE) for rows in rows_per_owner)
    return FLConfig(
        workers=OWNERS,
        rounds=epochs * batches_per_epoch,
        local_steps=1,
        lr=LR,
        batch_size=BATCH_SIZE,
        loss_reduction="mean",
        precision_fractional=precision,
        seed=seed,
        min_owners=2,
        **settings,
    )


def test_mse(x: torch.Tensor, y: torch.Tensor):
    """``evaluate(model)``: mean squared error on rows the model owner holds (the held-out test set)."""

    def evaluate(model: nn.Module) -> Dict[str, float]:
        with torch.no_grad():
            mse = F.mse_loss(model(x), y)
        return {"test_mse": mse.item()}

    return evaluate


def flat_parameters(state: Dict[str, torch.Tensor]) -> torch.Tensor:
    """A history's model state as one vector, in ``parameters_to_vector`` order (Net has no buffers)."""
    return torch.cat([t.flatten() for t in state.values()])


def train_over_tls(config: FLConfig, parts, model: nn.Module, evaluate):
    """Each owner a ``fl-smpc worker`` process serving its rows (a CSV) with this file as its task, all over
    mutual TLS with a throw-away federation; the processes are always stopped."""
    import os
    import tempfile

    from fl_smpc.model_owner.connect import train_with_owners
    from fl_smpc.network.csvdata import write_csv
    from fl_smpc.network.launcher import local_workers
    from fl_smpc.network.tls import create_federation

    with tempfile.TemporaryDirectory(prefix="fl-smpc-boston-") as tmp:
        paths = {}
        for name, (x, y) in zip(config.workers, parts):
            paths[name] = os.path.join(tmp, f"{name}.csv")
            write_csv(paths[name], x, y, binary_labels=False)
        certs = os.path.join(tmp, "certs")
        create_federation(certs, ["model", *config.workers], days=1)
        args = ("--task", str(Path(__file__).resolve()), "--min-owners", "2")
        with local_workers(paths, certs=certs, worker_args=args) as addresses:
            return train_with_owners(
                config, addresses, str(Path(__file__).resolve()), model=model, certs=certs, evaluate=evaluate
            )


def run(
    epochs: int = 10,
    seed: int = 0,
    precision: int = PRECISION,
    transport: str = "virtual",
    training: str = "tutorial",
    aggregation: str = "additive",
) -> dict:
    """Secure and plaintext FedAvg from the same initial model; per-epoch test MSE, train loss and timings.

    ``transport="websocket"``: the owners are worker processes over mutual TLS (owner-side training).
    """
    (x_train, y_train), (x_test, y_test) = load_data(seed)
    parts = split_dataset(x_train, y_train, len(OWNERS), binary_labels=False)
    training = "owner" if transport == "websocket" else training
    config = part10_config(
        epochs, seed, [len(x) for x, _ in parts], precision, training=training, aggregation=aggregation
    )
    evaluate = test_mse(x_test, y_test)
    torch.manual_seed(seed)
    model = Net()

    started = time.perf_counter()  # first, while torch is not hooked yet; the caller's model is left as it is
    plain = plaintext_fedavg(config, x_train, y_train, model=model, loss_fn=F.mse_loss, evaluate=evaluate)
    plain_s = time.perf_counter() - started
    started = time.perf_counter()
    if transport == "websocket":
        history = train_over_tls(config, parts, model, evaluate)
    else:
        history = train_federated(config, x_train, y_train, model=model, loss_fn=F.mse_loss, evaluate=evaluate)
    secure_s = time.perf_counter() - started

    per_epoch = config.rounds // epochs
    rows = [
        {
            "epoch": 0,
            "secure_test_mse": history.initial_metrics["test_mse"],
            "plain_test_mse": plain.initial_metrics["test_mse"],
            "secure_train_mse": history.initial_loss,
            "plain_train_mse": plain.initial_loss,
        }
    ]
    for epoch in range(1, epochs + 1):
        secure, reference = history.rounds[epoch * per_epoch - 1], plain.rounds[epoch * per_epoch - 1]
        rows.append(
            {
                "epoch": epoch,
                "secure_test_mse": secure.metrics["test_mse"],
                "plain_test_mse": reference.metrics["test_mse"],
                "secure_train_mse": secure.global_loss,
                "plain_train_mse": reference.global_loss,
            }
        )
    difference = max_differences(history, plain)[-1]
    return {
        "config": config,
        "rows": rows,
        "secure_s": secure_s,
        "plain_s": plain_s,
        "history": history,
        "plain": plain,
        "max_param_diff": difference,
        "owners_rows": [len(x) for x, _ in parts],
        "test_rows": len(x_test),
    }


def format_table(result: dict) -> str:
    config = result["config"]
    lines = [
        f"Part 10 on Boston housing: owners {', '.join(config.workers)} with {result['owners_rows']} rows, "
        f"{result['test_rows']} test rows; batch {config.batch_size}, lr {config.lr}, "
        f"{config.rounds} rounds (one per batch), precision {config.precision_fractional}, seed {config.seed}; "
        f"training {config.training}, aggregation {config.aggregation}",
        "",
        "| epoch | test MSE secure | test MSE plaintext | train MSE secure | train MSE plaintext |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['epoch']} | {row['secure_test_mse']:.3f} | {row['plain_test_mse']:.3f} "
            f"| {row['secure_train_mse']:.3f} | {row['plain_train_mse']:.3f} |"
        )
    quantum = 10.0**-config.precision_fractional
    lines += [
        "",
        f"largest parameter difference after the last round: {result['max_param_diff']:.2e} "
        f"({result['max_param_diff'] / quantum:.1f} quanta)",
        f"time: secure {result['secure_s']:.1f} s (syft hook, workers, {config.rounds} rounds), "
        f"plaintext {result['plain_s']:.2f} s",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="passes over each owner's data (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split and the model (default: %(default)s)")
    parser.add_argument(
        "--precision",
        type=int,
        default=PRECISION,
        help="fixed-precision fractional digits of the shares (default: %(default)s, as in Part 10)",
    )
    parser.add_argument(
        "--transport",
        choices=("virtual", "websocket"),
        default="virtual",
        help="virtual: in-process; websocket: two fl-smpc worker processes over mutual TLS (default: %(default)s)",
    )
    parser.add_argument(
        "--training",
        choices=("tutorial", "owner"),
        default="tutorial",
        help="in-process: the tutorial's pointer loop or owner-side training (websocket: always owner)",
    )
    parser.add_argument("--aggregation", choices=("additive", "pairwise"), default="additive")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs: must be a positive integer, got {args.epochs}")
    try:
        result = run(args.epochs, args.seed, args.precision, args.transport, args.training, args.aggregation)
    except ValueError as err:  # a bad --seed or --precision, named by FLConfig
        parser.error(str(err))
    except FlSmpcError as err:
        print(f"boston_housing.py: error: {err}", file=sys.stderr)
        return 1
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
