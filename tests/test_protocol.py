"""The averaging protocol's rules against plain PyTorch: FedAvg weights, a minimum number of owners,
rounds that survive a lost owner, and owners drawn per round."""

import copy
from dataclasses import replace

import pytest
import torch
from syft.frameworks.torch.tensors.interpreters.additive_shared import AdditiveSharingTensor
from torch.nn.utils import parameters_to_vector

from fl_smpc import FLConfig, RoundFailed, split_dataset, toy_dataset, train_federated
from fl_smpc import federated
from fl_smpc.cli import main
from fl_smpc.errors import ConfigError, WorkerUnreachable
from fl_smpc.federated import owners_of_round
from fl_smpc.pairwise_owner import PairwiseOwner
from fl_smpc.reference import local_train, fedavg_rounds, seed_model
from fl_smpc.secure_aggregation import secure_average

QUANTUM = 1e-3


def flat(state):
    return torch.cat([state["weight"].flatten(), state["bias"].flatten()])


# --- weighted FedAvg ---


def test_weighted_secure_mean_matches_plaintext_for_owners_of_1_2_and_7_examples(make_workers):
    torch.manual_seed(0)
    workers = make_workers(3)
    counts = [1.0, 2.0, 7.0]
    values = [torch.randn(500) * 3 for _ in counts]
    remote = [torch.nn.Linear(500, 1, bias=False) for _ in counts]
    for model, v in zip(remote, values):
        with torch.no_grad():
            model.weight.copy_(v.view(1, -1))
    pointers = [m.send(w) for m, w in zip(remote, workers)]
    secure = secure_average(pointers, workers, 3, counts)
    weighted = sum(c * v for c, v in zip(counts, values)) / sum(counts)
    plain = torch.stack(values).mean(0)
    assert (secure - weighted).abs().max().item() <= QUANTUM
    assert (weighted - plain).abs().max().item() > 100 * QUANTUM  # the weights matter here


def test_toy_run_with_samples_weighting_is_the_seed_s_divide_by_three():
    """Two rows per owner: samples weighting is exactly the equal mean of the seed."""
    samples = train_federated(FLConfig(seed=0, weighting="samples"))
    equal = train_federated(FLConfig(seed=0, weighting="equal"))
    for a, b in zip(samples.rounds, equal.rounds):
        assert torch.equal(flat(a.model), flat(b.model))


def test_unequal_owners_follow_weighted_fedavg():
    """Five owners over six rows (2,1,1,1,1): the secure run follows FedAvg weighted by rows, not the plain mean."""
    config = FLConfig(workers=[f"w{i}" for i in range(5)], rounds=3, seed=4)
    data, target = toy_dataset()
    history = train_federated(config)
    parts = split_dataset(data, target, 5)
    weighted = fedavg_rounds(seed_model(4), parts, 3, config.lr, config.local_steps)
    plain = fedavg_rounds(seed_model(4), parts, 3, config.lr, config.local_steps, weighting="equal")
    ours = flat(history.rounds[-1].model)
    assert (ours - weighted[-1].params).abs().max().item() <= 3 * QUANTUM
    assert (ours - plain[-1].params).abs().max().item() > 10 * QUANTUM


# --- the minimum number of owners ---


def test_two_owners_refused_by_default_and_allowed_knowingly(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--workers", "bob,alice"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "min_owners is 3" in err and "each learns the other's model from the average" in err
    assert "--min-owners 2" in err
    assert main(["--workers", "bob,alice", "--min-owners", "2", "--seed", "0", "--rounds", "1"]) == 0
    with pytest.raises(ConfigError):
        FLConfig(workers=("bob", "alice"))
    assert FLConfig(workers=("bob", "alice"), min_owners=2).min_owners == 2


# --- rounds that survive a lost owner ---

FOUR = FLConfig(workers=("w0", "w1", "w2", "w3"), rounds=3, seed=3, weighting="equal")


def expected_with_w2_dropped_in_round_2(config):
    """Plain FedAvg: rounds 1 and 3 over all four owners, round 2 over w0, w1, w3 only."""
    data, target = toy_dataset()
    parts = split_dataset(data, target, 4)
    model = seed_model(config.seed)
    fedavg_rounds(model, parts, 1, config.lr, config.local_steps, weighting="equal")
    survivors = [parts[0], parts[1], parts[3]]
    local = [copy.deepcopy(model) for _ in survivors]
    for m, (x, y) in zip(local, survivors):
        local_train(m, x, y, config.lr, config.local_steps)
    mean = torch.stack([parameters_to_vector(m.parameters()) for m in local]).mean(0)
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(mean, model.parameters())
    fedavg_rounds(model, parts, 1, config.lr, config.local_steps, rounds_done=2, weighting="equal")
    return parameters_to_vector(model.parameters()).detach(), mean.detach()


def assert_round_2_went_on_without_w2(history, config, stage):
    r1, r2, r3 = history.rounds
    assert r1.contributors == ["w0", "w1", "w2", "w3"] and r1.dropped == {}
    assert r2.contributors == ["w0", "w1", "w3"] and list(r2.dropped) == ["w2"]
    assert f"(during {stage})" in r2.dropped["w2"] and "injected" in r2.dropped["w2"]
    assert "w2" not in r2.worker_losses
    assert r3.contributors == ["w0", "w1", "w2", "w3"]  # asked again the next round
    final, round_2 = expected_with_w2_dropped_in_round_2(config)
    assert (flat(r2.model) - round_2).abs().max().item() <= 2 * QUANTUM
    assert (flat(r3.model) - final).abs().max().item() <= 3 * QUANTUM
    doc = history.to_dict()
    assert doc["rounds"][1]["dropped"] == r2.dropped and doc["rounds"][1]["contributors"] == ["w0", "w1", "w3"]


class InRound:
    """Which round the loop is in, from ``on_round`` (called after each completed round)."""

    def __init__(self):
        self.round = 1

    def __call__(self, result, _history):
        self.round = result.round + 1


@pytest.mark.parametrize("aggregation", ["additive", "pairwise"])
def test_owner_failing_during_training_is_dropped_and_the_round_completes(monkeypatch, aggregation):
    config = replace(FOUR, aggregation=aggregation)
    original = federated.train_locally

    def failing(remote_model, *args, **kwargs):
        if remote_model.location.id == "w2" and kwargs.get("first_step", args[-1]) == FOUR.local_steps:  # round 2
            raise WorkerUnreachable("w2", "injected: connection lost")
        return original(remote_model, *args, **kwargs)

    monkeypatch.setattr(federated, "train_locally", failing)
    history = train_federated(config)
    assert_round_2_went_on_without_w2(history, config, "training")


def test_owner_failing_while_sharing_is_dropped_and_the_sum_redone(monkeypatch, hook):
    """w2 fails after w0 and w1 have already shared: their shares are discarded, fresh ones made."""
    original, now = AdditiveSharingTensor.generate_shares, InRound()
    shared_by = []

    def generate_shares(self, secret, n_workers, random_type):  # runs on the owner making its shares
        if now.round == 2:
            shared_by.append((self.owner.id, n_workers))
            if self.owner.id == "w2":
                raise WorkerUnreachable("w2", "injected while sharing")
        return original(self, secret, n_workers, random_type)

    monkeypatch.setattr(AdditiveSharingTensor, "generate_shares", generate_shares)
    history = train_federated(FOUR, on_round=now)
    assert_round_2_went_on_without_w2(history, FOUR, "sharing")
    # attempt 1 among all four, stopped at w2; attempt 2 among the three, every one of them sharing again
    assert shared_by == [("w0", 4), ("w1", 4), ("w2", 4), ("w0", 3), ("w1", 3), ("w3", 3)]


def test_owner_failing_while_masking_is_dropped_and_the_sum_redone_with_fresh_masks(monkeypatch):
    """Pairwise: w2 fails while the owners mask their vectors; the others' vectors of that attempt cannot be
    summed (w2's masks do not cancel), and the round is redone among the three with a fresh nonce."""
    config, now = replace(FOUR, aggregation="pairwise"), InRound()
    original, nonces = PairwiseOwner.pairwise_masked_vector, []

    def masked_vector(self, tensor_id, session, round_, attempt, owners, precision):
        if now.round == 2:
            nonces.append((self.id, round_, attempt, len(owners)))
            if self.id == "w2":
                raise WorkerUnreachable("w2", "injected while masking")
        return original(self, tensor_id, session, round_, attempt, owners, precision)

    monkeypatch.setattr(PairwiseOwner, "pairwise_masked_vector", masked_vector)
    history = train_federated(config, on_round=now)
    assert_round_2_went_on_without_w2(history, config, "masking")
    attempts = {(r, a, n) for who, r, a, n in nonces if who != "w2"}
    assert len(attempts) == 2 and len({(r, a) for r, a, _ in attempts}) == 2  # a fresh nonce for the redo
    assert sorted(n for _, _, n in attempts) == [3, 4]


def test_with_three_owners_and_min_owners_three_a_lost_owner_fails_the_round(monkeypatch):
    original = federated.train_locally

    def failing(remote_model, *args, **kwargs):
        if remote_model.location.id == "alice":
            raise WorkerUnreachable("alice", "injected")
        return original(remote_model, *args, **kwargs)

    monkeypatch.setattr(federated, "train_locally", failing)
    with pytest.raises(RoundFailed) as err:
        train_federated(FLConfig(seed=0))
    assert (err.value.round, err.value.worker) == (1, "alice")
    assert "2 owners left (bob, jane), fewer than min_owners 3" in str(err.value)
    assert err.value.history.rounds == []


# --- owners per round ---


def test_owners_per_round_are_reproducible_from_the_seed_and_respect_min_owners():
    config = FLConfig(workers=[f"w{i}" for i in range(6)], rounds=8, seed=5, owners_per_round=3)
    history = train_federated(config)
    again = train_federated(config)
    chosen = [r.contributors for r in history.rounds]
    assert chosen == [r.contributors for r in again.rounds]
    assert chosen == [[f"w{i}" for i in owners_of_round(config, r)] for r in range(1, 9)]
    assert all(len(c) == 3 for c in chosen) and len({tuple(c) for c in chosen}) > 1
    other_seed = [owners_of_round(FLConfig(workers=config.workers, seed=6, owners_per_round=3), r) for r in range(1, 9)]
    assert other_seed != [owners_of_round(config, r) for r in range(1, 9)]
    with pytest.raises(ConfigError, match="owners_per_round: must be an integer from min_owners"):
        FLConfig(workers=config.workers, owners_per_round=2)
