"""examples/boston_housing.py (PySyft Part 10) for one epoch: secure rounds are plaintext FedAvg rounds."""
import importlib.util
from pathlib import Path

import pytest
import torch.nn.functional as F

from fl_smpc import split_dataset
from fl_smpc.reference import fedavg_rounds, pooled_loss

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "boston_housing.py"


@pytest.fixture(scope="module")
def boston():
    spec = importlib.util.spec_from_file_location("boston_housing", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_epoch(boston):
    return boston.run(epochs=1, seed=0)


def test_loss_falls_in_the_first_epoch(one_epoch):
    start, end = one_epoch["rows"]
    for column in ("secure_test_mse", "plain_test_mse", "secure_train_mse", "plain_train_mse"):
        assert end[column] < 0.8 * start[column], column


def test_every_round_is_a_plaintext_round_within_one_quantum(boston, one_epoch):
    """Each secure round (batch of 8, F.mse_loss, 2 owners) replayed in plain PyTorch from its own start.

    Over the whole epoch the two runs drift apart further than that (syft's fix_prec truncates toward
    zero every round; docs/api.md), so this compares round by round.
    """
    history, config = one_epoch["history"], one_epoch["config"]
    (x_train, y_train), _ = boston.load_data(config.seed)
    parts = split_dataset(x_train, y_train, 2, binary_labels=False)
    quantum = 10.0 ** -config.precision_fractional
    model = boston.Net()
    previous = history.initial_model
    for r in history.rounds:
        model.load_state_dict(previous)
        (reference,) = fedavg_rounds(model, parts, 1, config.lr, config.local_steps, F.mse_loss,
                                     config.batch_size, rounds_done=r.round - 1)
        secure = boston.flat_parameters(r.model)
        assert (secure - reference.params).abs().max().item() <= quantum + 1e-6, f"round {r.round}"
        model.load_state_dict(r.model)
        assert r.global_loss == pytest.approx(pooled_loss(model, parts, F.mse_loss), rel=1e-5)
        previous = r.model


def test_table_and_flags(boston, one_epoch, capsys):
    table = boston.format_table(one_epoch).splitlines()
    assert "| epoch | test MSE secure | test MSE plaintext | train MSE secure | train MSE plaintext |" in table
    assert [line.split(" | ")[0] for line in table if line.startswith("| ") and line[2].isdigit()] == ["| 0", "| 1"]
    with pytest.raises(SystemExit):
        boston.main(["--epochs", "0"])
    assert "--epochs: must be a positive integer" in capsys.readouterr().err


@pytest.fixture(scope="module")
def over_tls(boston):
    """Part 10 over mutual TLS: 2 worker processes train with examples/boston_housing.py as their task."""
    return boston.run(epochs=1, seed=0, transport="websocket")  # two owners: additive (SecAgg needs three)


def test_part10_over_tls_equals_in_process_owner_training_and_plaintext(boston, over_tls):
    in_process = boston.run(epochs=1, seed=0, training="owner")
    assert over_tls["config"].training == "owner" and len(over_tls["history"].rounds) == 26
    quantum = 10.0 ** -over_tls["config"].precision_fractional
    for net, local in zip(over_tls["history"].rounds, in_process["history"].rounds):
        assert boston.flat_parameters(net.model).tolist() == boston.flat_parameters(local.model).tolist()
        assert net.metrics == local.metrics
    # the same table as in-process: within a few quanta of plaintext FedAvg after the epoch
    assert over_tls["max_param_diff"] <= 5 * quantum
    assert [row["epoch"] for row in over_tls["rows"]] == [0, 1]
    assert over_tls["rows"][1]["secure_test_mse"] == pytest.approx(over_tls["rows"][1]["plain_test_mse"], rel=1e-3)
