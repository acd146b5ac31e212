"""Differential privacy enforced by each data owner (owner-side training): the owner's budget, its refusal of
weaker settings, what leaves it with DP on -- in-process and over mutual TLS."""
import json
import math

import numpy as np
import pytest
import torch

from fl_smpc import FLConfig, train_federated
from fl_smpc.config import OwnerBounds
from fl_smpc.data import split_dataset, toy_dataset
from fl_smpc.data_owner.owner import MODEL, DataOwner
from fl_smpc.data_owner.privacy import DPSettings, OwnerBudget, _prv_accountant
from fl_smpc.data_owner.task import fingerprint, load_task
from fl_smpc.errors import DataError
from fl_smpc.model_owner.connect import train_with_owners
from fl_smpc.network.csvdata import split_to_csv
from fl_smpc.network.launcher import local_workers
from fl_smpc.network.tls import create_federation
from fl_smpc.network.wire import Message

PRIVATE = dict(training="owner", dp="distributed", local_steps=1, lr=0.5, dp_noise=3.0, dp_sampling=0.5)


def rounds_within(epsilon, delta, z, q):
    """The most rounds whose epsilon (prv-accountant's upper bound on the Poisson-subsampled Gaussian) stays
    within the budget, counted here with one accountant (tests/test_privacy.py checks it against RDP)."""
    accountant = _prv_accountant(q, z, 64, delta)
    n = 0
    while accountant.compute_epsilon(delta, [n + 1])[2] <= epsilon:
        n += 1
    return n


def test_the_budget_stops_every_owner_at_the_round_that_would_exceed_it():
    config = FLConfig(seed=0, rounds=50, dp_epsilon=2.0, aggregation="additive", **PRIVATE)
    history = train_federated(config)
    expected = rounds_within(2.0, 1e-5, 3.0, 0.5)
    assert 0 < expected < 50 and len(history.rounds) == expected
    assert history.stopped and "privacy budget spent" in history.stopped
    spent = history.rounds[-1].epsilon
    assert set(spent) == {"bob", "alice", "jane"} and max(spent.values()) <= 2.0
    assert all(math.isnan(r.global_loss) for r in history.rounds)  # no evaluation on the owners' rows


def owner_with_dp(ledger=None, **own):
    data, target = split_dataset(*toy_dataset(), 3)[0]
    settings = DPSettings(**{"mode": "distributed", "noise_multiplier": 2.0, "sampling_rate": 0.5, "min_owners": 3,
                             **own})
    owner = DataOwner("bob", data, target, load_task("toy"), OwnerBounds(dp=settings),
                      peers={"alice": None, "jane": None}, ledger=ledger)
    hello = {"session": "s", "owners": ["bob", "alice", "jane"], "neighbours": None, "graph_seed": "00" * 16}
    assert owner.handle(MODEL, Message("hello", hello)).kind == "welcome"
    return owner


def train_request(owner, dp, round_=1, kind="train"):
    settings = {"precision": 3, "aggregation": "pairwise"}
    if kind == "train":
        settings.update(lr=0.1, local_steps=1, fl_round=1, weighting="samples", batch_size=None, dp=dp)
    fields = {"session": "s", "round": round_, "owners": ["bob", "alice", "jane"], "task": "toy",
              "fingerprint": fingerprint("toy", owner.model), "settings": settings}
    return owner.handle(MODEL, Message(kind, fields, {"params": np.zeros(4, dtype=np.float32)}))


DP = {"mode": "distributed", "noise_multiplier": 2.0, "clip_norm": 1.0, "sampling_rate": 0.5, "min_owners": 3}


@pytest.mark.parametrize("weaker, reason", [
    ({"noise_multiplier": 1.0}, "noise multiplier 1 < the owner's 2"),
    ({"sampling_rate": 0.9}, "sampling rate 0.9 > the owner's 0.5"),
    ({"min_owners": 4}, "noise split over 4 owners"),
    (None, "at least as strong as its own"),
])
def test_an_owner_refuses_settings_weaker_than_its_own(weaker, reason):
    owner = owner_with_dp()
    reply = train_request(owner, None if weaker is None else {**DP, **weaker})
    assert reply.kind == "refused" and reason in reply.fields["reason"], reply.fields
    assert owner.contributions == 0 and (owner.budget is None or owner.budget.rounds == 0)
    if weaker is not None:
        return
    # the owner's own settings (or stronger) are accepted; epsilon spent is reported, and is the owner's count
    stronger = train_request(owner, {**DP, "noise_multiplier": 3.0}, round_=2)
    assert stronger.kind != "refused" or "mask shares" not in stronger.fields.get("reason", "")
    assert owner.budget is not None and owner.budget.rounds == 1
    assert stronger.fields.get("epsilon") == pytest.approx(owner.budget.epsilon_after(1))


def test_a_restarted_owner_keeps_its_spent_budget(tmp_path):
    """The ledger is on disk before a release leaves: a new process of the same owner goes on from it."""
    ledger = str(tmp_path / "bob.dp-ledger.json")
    own = {"epsilon": 3.0}
    allowed = OwnerBudget(3.0, 1e-5, 2.0, 0.5).max_rounds()  # the budget's rounds in all
    assert allowed > 3
    first = owner_with_dp(ledger=ledger, **own)
    for round_ in (1, 2):
        assert "epsilon" in train_request(first, DP, round_=round_).fields
    assert first.budget.rounds == 2
    restarted = owner_with_dp(ledger=ledger, **own)  # a crash, a restart: same owner, same ledger
    assert restarted.budget is not None and restarted.budget.rounds == 2
    assert restarted.budget.epsilon_spent == pytest.approx(first.budget.epsilon_spent)
    taken = 2
    for round_ in range(3, 40):
        reply = train_request(restarted, DP, round_=round_)
        if "epsilon" not in reply.fields:
            break
        taken += 1
    assert reply.kind == "refused" and "privacy budget spent" in reply.fields["reason"]
    assert taken == allowed  # over both processes, not per process
    with pytest.raises(DataError, match="other DP settings"):
        owner_with_dp(ledger=ledger, epsilon=4.0)


def test_with_dp_an_owner_releases_no_evaluation():
    reply = train_request(owner_with_dp(), None, kind="evaluate")
    assert reply.kind == "refused" and "no evaluation" in reply.fields["reason"]


def test_over_tls_each_worker_enforces_its_own_budget(tmp_path):
    names = ("bob", "alice", "jane")
    paths = split_to_csv(str(tmp_path / "data"), names)
    certs = str(tmp_path / "certs")
    create_federation(certs, ["model", *names], days=1)
    flags = ("--dp", "distributed", "--dp-epsilon", "2", "--dp-noise", "3", "--dp-sampling", "0.5")
    config = FLConfig(seed=0, rounds=50, dp_epsilon=2.0, aggregation="pairwise", **PRIVATE)
    with local_workers(paths, timeout=5.0, certs=certs, worker_args=flags) as addresses:
        weak = FLConfig(seed=0, rounds=2, aggregation="pairwise", **{**PRIVATE, "dp_noise": 1.0})
        with pytest.raises(Exception, match="noise multiplier 1 < the owner's 3"):
            train_with_owners(weak, addresses, certs=certs, timeout=20.0)
        history = train_with_owners(config, addresses, certs=certs, timeout=20.0)
    assert len(history.rounds) == rounds_within(2.0, 1e-5, 3.0, 0.5)
    assert "privacy budget spent" in history.stopped
    for path in paths.values():  # each worker's ledger (the default: beside its data) counts what it released
        with open(path + ".dp-ledger.json") as ledger:
            assert json.load(ledger)["rounds"] == len(history.rounds)
    assert torch.isfinite(torch.cat([t.flatten() for t in history.rounds[-1].model.values()])).all()


def test_a_resumed_run_keeps_each_owners_epsilon_and_its_budget(tmp_path):
    """The checkpoint keeps epsilon spent per round; the resumed run's owners (new objects in this process)
    start from what they had spent, so round 3 spends as round 3 of an uninterrupted run, not as a round 1."""
    from fl_smpc.config import RunSpec
    from fl_smpc.data_owner.privacy import OwnerBudget
    from fl_smpc.history_io import load_checkpoint
    from fl_smpc.runner import run

    path = str(tmp_path / "run.json")
    config = FLConfig(seed=0, rounds=2, aggregation="additive", **{**PRIVATE, "dp_sampling": 1.0})
    first = run(RunSpec(config=config, checkpoint=path)).history
    assert [r.epsilon for r in load_checkpoint(path).rounds] == [r.epsilon for r in first.rounds]
    resumed = run(RunSpec(config=config, checkpoint=path, resume=path, resume_rounds=4)).history
    budget = OwnerBudget.for_settings(config.dp_settings(), config.precision_fractional, 4 + 1)  # toy: P = 4
    for k, r in enumerate(resumed.rounds, start=1):
        assert r.epsilon == pytest.approx(dict.fromkeys(config.workers, budget.epsilon_after(k)), rel=1e-9)
    assert [r.epsilon for r in load_checkpoint(path).rounds] == [r.epsilon for r in resumed.rounds]


def test_the_sms_command_trains_with_the_budgets_settings_and_reports_epsilon(capsys):
    """`fl-smpc --dataset sms --dp distributed --dp-epsilon 1`: the profile for epsilon 1, the noise calibrated so
    that its rounds just fit, epsilon spent per owner per round, and the non-private centralized model beside it."""
    from fl_smpc.cli import main
    from fl_smpc.config import sms_dp_defaults

    assert main(["--dataset", "sms", "--dp", "distributed", "--dp-epsilon", "1", "--seed", "0", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    profile, config = sms_dp_defaults(1.0), doc["config"]
    assert (config["rounds"], config["lr"], config["dp_sampling"], config["dp_clip"]) == (
        profile["rounds"], profile["lr"], profile["dp_sampling"], profile["dp_clip"],
    )  # fmt: skip
    budget = OwnerBudget(1.0, 1e-5, config["dp_noise"], 1.0)
    assert budget.max_rounds(limit=20) == config["rounds"] == len(doc["rounds"])  # the rounds just fit
    for n, r in enumerate(doc["rounds"], 1):
        assert r["epsilon"] == {o: pytest.approx(budget.epsilon_after(n)) for o in ("bob", "alice", "jane")}
        assert r["worker_losses"] == {} and 0.0 <= r["metrics"]["f1"] <= 1.0
    assert doc["rounds"][-1]["epsilon"]["bob"] <= 1.0
    assert doc["baseline"]["centralized"]["steps"] == 400 and doc["baseline"]["centralized"]["f1"] > 0.85


def test_without_a_noise_multiplier_the_rounds_just_fit_the_budget():
    """dp_noise=None (the CLI's default): the least z with which the run's rounds fit; recorded in the history."""
    from fl_smpc.data_owner.privacy import calibrate_noise

    config = FLConfig(seed=0, rounds=20, dp_epsilon=3.0, **{**PRIVATE, "dp_noise": None, "dp_sampling": 1.0})
    history = train_federated(config)
    z = calibrate_noise(3.0, 1e-5, 1.0, 20)
    assert history.config.dp_noise == z and len(history.rounds) == 20 and not history.stopped
    assert max(history.rounds[-1].epsilon.values()) <= 3.0 < OwnerBudget(3.0, 1e-5, z, 1.0).epsilon_after(21)


def test_an_owner_counting_the_proven_bound_spends_it_and_the_run_fits_it():
    """--dp-accountant rdp: the noise is calibrated to the RDP bound, and each owner reports that bound."""
    from fl_smpc.data_owner.privacy import calibrate_noise, rdp_epsilon

    config = FLConfig(seed=0, rounds=20, dp_epsilon=3.0, dp_accountant="rdp",
                      **{**PRIVATE, "dp_noise": None, "dp_sampling": 1.0})  # fmt: skip
    history = train_federated(config)
    z = calibrate_noise(3.0, 1e-5, 1.0, 20, "rdp")
    assert history.config.dp_noise == z > calibrate_noise(3.0, 1e-5, 1.0, 20) and len(history.rounds) == 20
    for n, r in enumerate(history.rounds, 1):
        assert list(r.epsilon.values()) == [pytest.approx(rdp_epsilon(1.0, z, n, 1e-5))] * 3
