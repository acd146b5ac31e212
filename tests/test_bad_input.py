"""Bad input: a clear message naming the problem, and nothing half-updated."""
import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from fl_smpc import FLConfig, RoundFailed, check_dataset, toy_dataset, train_federated
from fl_smpc.secure_aggregation import AggregationError
from reference import seed_model


@pytest.mark.parametrize("kwargs, message", [
    (dict(workers=["bob"]), "at least 2 workers"),
    (dict(workers=[]), "at least 2 workers"),
    (dict(workers=["bob", "alice", "bob"]), r"duplicate worker names \['bob'\]"),
    (dict(workers=["bob", ""]), "1-64 letters"),
    (dict(workers=["me", "bob"]), "local worker"),
    (dict(rounds=0), "rounds: must be a positive integer"),
    (dict(local_steps=-1), "local_steps: must be a positive integer"),
    (dict(lr=0.0), "lr: must be a positive finite number"),
    (dict(lr=float("nan")), "lr: must be a positive finite number"),
    (dict(precision_fractional=13), "precision_fractional: must be an integer from 0 to 12"),
    (dict(seed=-1), "seed"),
])
def test_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FLConfig(**kwargs)


def test_more_workers_than_rows():
    with pytest.raises(ValueError, match="cannot split 6 data rows across 7 workers"):
        train_federated(FLConfig(workers=[f"w{i}" for i in range(7)], seed=0))


def test_classification_targets_must_be_binary():
    """The toy/CSV task's check; train_federated itself accepts any finite targets (tests/test_custom_model.py)."""
    data, target = toy_dataset()
    target[3, 0] = 2.0
    with pytest.raises(ValueError, match=r"labels must be 0 or 1; rows \[3\] have \[2.0\]"):
        check_dataset(data, target)


def test_target_shape_must_match_data():
    data, target = toy_dataset()
    with pytest.raises(ValueError, match=r"target: expected 6 rows, shape \(6,\) or \(6, k\)"):
        train_federated(FLConfig(seed=0), data, target[:5])
    with pytest.raises(ValueError, match=r"target: expected shape \(6, 1\)"):
        check_dataset(data, target[:5])


def test_feature_count_must_match_model():
    data, target = toy_dataset()
    with pytest.raises(ValueError, match=r"model does not accept data rows of shape \(3,\).*size mismatch"):
        train_federated(FLConfig(seed=0), data, target, model=nn.Linear(4, 1))


def assert_failed_round_left_model_alone(config, model, round_, worker, match):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    before_model = copy.deepcopy(model)
    with pytest.raises(RoundFailed, match=match) as err:
        train_federated(config, model=model)
    assert (err.value.round, err.value.worker) == (round_, worker)
    assert isinstance(err.value.__cause__.__cause__, AggregationError)  # round failed <- too few owners <- bob
    assert len(err.value.history.rounds) == round_ - 1
    # what the model must hold: an independent run that stops before the failing round
    expected = train_federated(replace(config, rounds=round_ - 1), model=copy.deepcopy(before_model)).rounds[-1].model \
        if round_ > 1 else before
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), f"{name} was changed by the failed round"


def test_diverging_training_is_refused_and_model_kept():
    """lr 1e10 makes local SGD overflow to Inf/NaN in round 1: refused, the model stays at its start."""
    assert_failed_round_left_model_alone(FLConfig(seed=0, lr=1e10), seed_model(0), 1, "bob",
                                         "round 1 failed: worker 'bob' holds non-finite")


def test_parameters_too_large_for_fixed_precision_are_refused_and_model_kept():
    model = seed_model(0)
    with torch.no_grad():
        model.bias.fill_(5e15)  # each owner's copy fits int64 alone, the sum of three does not
    assert_failed_round_left_model_alone(FLConfig(seed=0), model, 1, "bob", "overflow")


def test_ctrl_c_mid_round_leaves_the_model_at_the_last_completed_round():
    """An interruption after the average was written (here: while evaluating round 2) puts round 1 back."""
    completed = train_federated(FLConfig(seed=0, rounds=1)).rounds[-1].model
    calls = []

    def evaluate(_model):
        calls.append(1)
        if len(calls) == 3:  # initial, round 1, round 2
            raise KeyboardInterrupt
        return {}

    model = seed_model(0)
    with pytest.raises(KeyboardInterrupt):
        train_federated(FLConfig(seed=0, rounds=3), model=model, evaluate=evaluate)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, completed[name])


def test_failure_in_a_later_round_keeps_the_last_completed_round():
    """lr 3 is stable for a round or two on this data and then diverges."""
    config = FLConfig(seed=0, lr=3.0, rounds=10)
    with pytest.raises(RoundFailed) as err:
        train_federated(config)
    assert err.value.round > 1
    model = seed_model(0)
    assert_failed_round_left_model_alone(config, model, err.value.round, err.value.worker, "failed")
