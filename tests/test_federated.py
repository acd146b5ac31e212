"""The round loop against plain-PyTorch FedAvg (fl_smpc.reference)."""
import logging

import pytest
import torch
from torch.nn.utils import parameters_to_vector

from fl_smpc import FLConfig, split_dataset, toy_dataset, train_federated
from reference import fedavg_rounds, seed_model


def reference_run(config):
    data, target = toy_dataset()
    model = seed_model(config.seed, data.shape[1])
    initial = parameters_to_vector(model.parameters()).detach().clone()
    parts = split_dataset(data, target, len(config.workers))
    return initial, fedavg_rounds(model, parts, config.rounds, config.lr, config.local_steps)


def flat(state):
    return torch.cat([state["weight"].flatten(), state["bias"].flatten()])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_global_loss_falls_well_below_initial(seed):
    history = train_federated(FLConfig(seed=seed))
    assert len(history.rounds) == 5
    assert history.rounds[-1].global_loss < 0.5 * history.initial_loss


@pytest.mark.parametrize("seed", [0, 7])
def test_matches_plaintext_fedavg(seed):
    """Every round's model, global loss and local losses equal plaintext FedAvg up to quantisation.

    Tolerance: each secure average is within one quantum (10**-p) of the true mean (syft truncates
    each owner's encoding toward zero: error < N quanta in the sum, < 1 after dividing by N). The local
    SGD steps on this quadratic loss with lr 0.1 do not amplify a parameter error (the step's Jacobian
    I - lr*H has eigenvalues in [0, 1] here), so after R rounds the error is at most R quanta.
    """
    config = FLConfig(seed=seed)
    history = train_federated(config)
    initial, reference = reference_run(config)
    quantum = 10.0 ** -config.precision_fractional
    assert torch.equal(flat(history.initial_model), initial)
    for r, (losses, loss, params, _) in zip(history.rounds, reference):
        tolerance = r.round * quantum
        assert (flat(r.model) - params).abs().max().item() <= tolerance
        assert r.global_loss == pytest.approx(loss, abs=20 * tolerance)  # loss is 2*sum|err|*|residual|-Lipschitz
        assert list(r.worker_losses.values()) == pytest.approx(losses, abs=20 * tolerance)


def test_same_seed_same_history_and_no_syft_warnings(caplog):
    """Running twice in one process reuses worker ids cleanly: same numbers, no 'already exists'."""
    with caplog.at_level(logging.WARNING):
        first = train_federated(FLConfig(seed=3, rounds=2)).to_dict()
        second = train_federated(FLConfig(seed=3, rounds=2)).to_dict()
    assert first == second
    assert not [r for r in caplog.records if "already exists" in r.getMessage()]


def test_unseeded_run_records_the_seed_it_drew():
    history = train_federated(FLConfig(rounds=1))
    assert isinstance(history.config.seed, int)
    again = train_federated(FLConfig(rounds=1, seed=history.config.seed))
    assert again.to_dict() == history.to_dict()


def test_other_worker_counts_and_given_model_is_updated_in_place():
    model = seed_model(5)
    history = train_federated(FLConfig(workers=("a", "b"), rounds=3, seed=5, min_owners=2), model=model)
    assert set(history.rounds[0].worker_losses) == {"a", "b"}
    assert torch.equal(model.weight.detach(), history.rounds[-1].model["weight"])
