"""Issue 6: shares stay unpredictable when --seed makes training reproducible.

syft 0.2.9 draws share masks from torch's global generator. These tests observe the shares syft
actually generates (a spy on ``AdditiveSharingTensor.generate_shares``) and run every check a
second time with the OS reseeding switched off, to show each check catches the real leak.
"""
import contextlib

import pytest
import torch

from fl_smpc import FLConfig, secure_aggregation, train_federated
from fl_smpc.secure_aggregation import secure_sum, share_randomness_from_os, uncompressed_messages
from fl_smpc.workers import virtual_workers

USER_SEED = 1234  # the --seed an attacker is assumed to know


@pytest.fixture
def recorded_shares(monkeypatch):
    """Every (encoded secret, [share per worker]) that syft's generate_shares produces during a test."""
    from syft.frameworks.torch.tensors.interpreters.additive_shared import AdditiveSharingTensor

    original = AdditiveSharingTensor.generate_shares
    calls = []

    def spy(self, secret, n_workers, random_type):
        shares = original(self, secret, n_workers, random_type)
        calls.append((secret.clone(), [s.clone() for s in shares]))
        return shares

    monkeypatch.setattr(AdditiveSharingTensor, "generate_shares", spy)
    return calls


@pytest.fixture(params=[True, False], ids=["os-reseeded", "reseeding-disabled"])
def reseeded(request, monkeypatch):
    """Run the test with the fix, and with the fix removed (syft's plain behaviour)."""
    if not request.param:
        monkeypatch.setattr(secure_aggregation, "share_randomness_from_os", contextlib.nullcontext)
    return request.param


def test_same_seed_gives_same_model_and_different_shares(recorded_shares, reseeded):
    runs = []
    for _ in range(2):
        recorded_shares.clear()
        history = train_federated(FLConfig(rounds=2, seed=USER_SEED))
        runs.append((history.rounds[-1].model, [shares for _, shares in recorded_shares]))
    (model_a, shares_a), (model_b, shares_b) = runs
    assert model_a.keys() == model_b.keys()
    for name in model_a:  # the revealed sums are exact, so the models are bit-identical
        assert torch.equal(model_a[name], model_b[name]), name
    assert len(shares_a) == len(shares_b) == 2 * 3  # 2 rounds x 3 owners, one share call each (flattened)
    same = [torch.equal(a, b) for call_a, call_b in zip(shares_a, shares_b) for a, b in zip(call_a, call_b)]
    if reseeded:
        assert not any(same), "a share repeated across two runs with the same seed"
    else:  # syft's own behaviour: anyone knowing the seed regenerates every mask
        assert all(same)


def observe_owner_shares(recorded_shares, hook, trials=64, k=64):
    """``trials`` reproducible runs (torch seeded with USER_SEED), 3 owners each sharing k fresh values.

    Returns owner 0's encoded secrets [trials, k] and the shares of them each worker received
    [workers, trials, k]: trial t, position j is one sample of "what worker w sees".
    """
    g = torch.Generator().manual_seed(0)
    secrets, shares = [], []
    with virtual_workers(["rand0", "rand1", "rand2"], hook) as workers:
        for _ in range(trials):
            ptrs = [((torch.rand(k, generator=g) - 0.5) * 200).send(w) for w in workers]  # |x| <= 100
            torch.manual_seed(USER_SEED)
            recorded_shares.clear()
            secure_sum(ptrs, workers)
            secret, owner0_shares = recorded_shares[0]
            secrets.append(secret)
            shares.append(torch.stack(owner0_shares))
    return torch.stack(secrets), torch.stack(shares).transpose(0, 1)


def uniformity_chi2(samples: torch.Tensor) -> float:
    """Pearson chi-square of the top 4 bits, per position across trials, summed; dof = 15 * positions.

    Uniform over the int64 ring => about dof; a share that repeats across trials => 15 * trials per position.
    """
    trials, positions = samples.shape
    top_bits = (samples >> 60) & 15
    counts = torch.zeros(16, positions).scatter_add_(0, top_bits, torch.ones(trials, positions))
    expected = trials / 16
    return float(((counts - expected) ** 2 / expected).sum())


def squared_correlation(secrets: torch.Tensor, shares: torch.Tensor) -> float:
    """Mean over positions of (trials - 1) * r**2, r = Pearson correlation across trials.

    About 1 for independent values (chi-square with 1 dof); trials - 1 when share = secret - constant.
    A share constant across trials has no correlation (r := 0) but fails the uniformity test.
    """
    x = secrets.double() - secrets.double().mean(0)
    s = shares.double() - shares.double().mean(0)
    norm = x.norm(dim=0) * s.norm(dim=0)
    r = torch.where(norm > 0, (x * s).sum(0) / norm.clamp(min=1e-300), torch.zeros_like(norm))
    return float((r ** 2).mean() * (secrets.shape[0] - 1))


def test_a_workers_share_is_uniform_and_uncorrelated_with_the_secret(recorded_shares, reseeded, hook):
    secrets, shares = observe_owner_shares(recorded_shares, hook)
    trials, positions = secrets.shape
    dof = 15 * positions
    chi2_limit = dof + 6 * (2 * dof) ** 0.5  # ~6 standard deviations above the mean
    corr_limit = 3.0  # ~11 standard deviations above the mean of 1
    chi2 = [uniformity_chi2(s) for s in shares]
    corr = [squared_correlation(secrets, s) for s in shares]
    # the shares still reconstruct the secret (int64 wrap-around is the ring's addition)
    assert torch.equal(shares.sum(0), secrets)
    if reseeded:
        assert max(chi2) < chi2_limit, (chi2, chi2_limit)
        assert max(corr) < corr_limit, corr
    else:  # every worker's share repeats or tracks the secret: both statistics fail by far
        assert min(chi2) > 10 * chi2_limit, (chi2, chi2_limit)
        assert corr[-1] > 0.9 * (trials - 1), corr  # the last share is secret - (a mask known from the seed)


def test_os_randomness_restores_the_training_generator():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    with share_randomness_from_os():
        first = torch.rand(4)
    with pytest.raises(RuntimeError):
        with share_randomness_from_os():
            second = torch.rand(4)
            raise RuntimeError("sharing failed")
    assert torch.equal(torch.rand(3), expected)  # as if nothing had been drawn
    assert not torch.equal(first, second)


def test_uncompressed_messages_is_scoped_and_sums_stay_exact(hook):
    from syft.serde import compression

    before = compression.default_compress_scheme
    with pytest.raises(KeyError):
        with uncompressed_messages():
            assert compression.default_compress_scheme == compression.NO_COMPRESSION
            raise KeyError("boom")
    assert compression.default_compress_scheme == before
    values = [torch.tensor([1.5, -2.25, 1000.125, 0.0]), torch.tensor([3.0, 2.25, -0.125, -7.5])]
    with virtual_workers(["exact0", "exact1"], hook) as workers:
        total = secure_sum([v.send(w) for v, w in zip(values, workers)], workers)
    assert torch.equal(total, values[0] + values[1])
    assert compression.default_compress_scheme == before
