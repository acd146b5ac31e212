"""The owner's differential privacy core (fl_smpc.data_owner.privacy): accounting, noise, clipping, sampling."""

import math
from collections import Counter

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from fl_smpc.data_owner import privacy
from fl_smpc.data_owner.privacy import (
    BudgetExhausted,
    DPSettings,
    OwnerBudget,
    accounting_noise_multiplier,
    clip_to_grid,
    clipped_sum,
    discrete_gaussian,
    discrete_gaussian_sq,
    grid_clip_bound,
    hooks_apply,
    mean_gradient,
    noise_variance,
    noised_contribution,
    per_example_gradients,
    poisson_sample,
    prv_epsilon,
    rdp_epsilon,
    require_one_local_step,
)
from fl_smpc.errors import ConfigError


def sum_squared_error(prediction, target):
    return ((prediction - target) ** 2).sum()


def mean_bce(logits, target):
    return nn.functional.binary_cross_entropy_with_logits(logits, target)


# --- accounting -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("q, z, rounds", [(0.05, 1.0, 100), (0.01, 0.8, 300), (0.1, 2.0, 50), (0.25, 3.0, 40)])
def test_prv_epsilon_lies_in_the_band_below_the_independent_rdp_bound(q, z, rounds):
    # RDP (Mironov et al. 2019, integer orders) is an upper bound; the PRV accountant is near-tight, so it
    # lands below it, typically 10-15 % below for these settings -- never above, never far below.
    lower, estimate, upper = prv_epsilon(q, z, rounds, 1e-5)
    rdp = rdp_epsilon(q, z, rounds, 1e-5)
    assert lower <= estimate <= upper
    assert 0.75 * rdp < upper <= rdp
    # the generic bound (Zhu & Wang 2019), valid for the discrete noise from its RDP curve alone, is looser
    assert rdp <= rdp_epsilon(q, z, rounds, 1e-5, generic=True) < 2.5 * rdp


@pytest.mark.parametrize("z, rounds", [(2.0, 10), (5.0, 30)])
def test_full_batch_prv_matches_the_analytic_gaussian_mechanism(z, rounds):
    # q = 1: `rounds` Gaussian releases compose into one with mu = sqrt(rounds) / z, whose delta(eps) is
    # Phi(-eps/mu + mu/2) - e**eps Phi(-eps/mu - mu/2) (Balle & Wang 2018; Dong, Roth & Su 2019).
    mu = math.sqrt(rounds) / z
    lower, _, upper = prv_epsilon(1.0, z, rounds, 1e-5)
    for eps in (lower - 0.02, upper + 0.02):
        delta = norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)
        assert (delta > 1e-5) == (eps < lower)


def test_distributed_accounting_multiplier_is_z_unless_the_shares_are_tiny():
    settings = DPSettings(mode="distributed", noise_multiplier=1.1, clip_norm=1.0, min_owners=3)
    assert accounting_noise_multiplier(settings, 3, 4097) == 1.1
    assert accounting_noise_multiplier(DPSettings(mode="local", noise_multiplier=1.1), 3, 4097) == 1.1
    # a share of a fraction of a quantum: the sum is far from a discrete Gaussian, the multiplier drops
    tiny = DPSettings(mode="distributed", noise_multiplier=0.3, clip_norm=0.001, min_owners=3)
    assert noise_variance(tiny, 3) == 1
    assert accounting_noise_multiplier(tiny, 3, 4097) < 0.3


def test_budget_stops_at_the_round_that_would_exceed_it():
    budget = OwnerBudget(epsilon=1.0, delta=1e-5, noise_multiplier=2.0, sampling_rate=0.05)
    allowed = budget.max_rounds()
    assert 60 < allowed < 100  # 81 with prv-accountant 0.2.0
    assert budget.epsilon_after(allowed) <= 1.0 < budget.epsilon_after(allowed + 1)
    while budget.can_take_round():
        budget.take_round()
    assert budget.rounds == allowed
    assert budget.spent == sorted(budget.spent) and budget.epsilon_spent <= 1.0
    with pytest.raises(BudgetExhausted, match="privacy budget spent: round"):
        budget.take_round()
    assert budget.rounds == allowed  # the refused round is not recorded
    history = budget.history()
    assert [row["round"] for row in history] == list(range(1, allowed + 1))
    assert math.isclose(sum(row["epsilon_round"] for row in history), budget.epsilon_spent)
    assert all(row["epsilon_round"] > 0 for row in history)


def test_budget_for_settings_and_a_budget_too_small_for_one_round():
    settings = DPSettings(mode="distributed", noise_multiplier=0.5, sampling_rate=0.5, epsilon=0.1)
    budget = OwnerBudget.for_settings(settings, precision=3, dimension=4097)
    assert budget.noise_multiplier == 0.5 and budget.max_rounds() == 0 and not budget.can_take_round()


# --- noise ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("s2", [2 * 10**6, 2 * 10**10])
def test_discrete_gaussian_spread_is_the_claimed_sigma(s2):
    draws = discrete_gaussian_sq(s2, 30_000)
    assert draws.dtype == np.int64
    sigma = math.sqrt(s2)
    # the sample std has a relative spread of 1 / sqrt(2 * 30000) = 0.4 %: 2 % is 5 standard errors
    assert abs(draws.std() / sigma - 1) < 0.02
    assert abs(draws.mean()) < 5 * sigma / math.sqrt(30_000)
    assert abs(np.mean(np.abs(draws)) / sigma - math.sqrt(2 / math.pi)) < 0.02


def test_discrete_gaussian_has_the_exact_probabilities_for_a_small_sigma():
    s2, n = 4, 20_000
    support = range(-12, 13)
    weights = {x: math.exp(-x * x / (2 * s2)) for x in support}
    total = sum(weights.values())
    counts = Counter(discrete_gaussian_sq(s2, n).tolist())
    assert set(counts) <= set(support)  # |x| > 12 has probability < 1e-7
    chi2 = sum((counts.get(x, 0) - n * w / total) ** 2 / (n * w / total) for x, w in weights.items() if w > 1e-3)
    assert chi2 < 45  # 17 cells: the 99.99th percentile of chi2(16) is ~42


def test_discrete_gaussian_rounds_the_variance_up():
    assert discrete_gaussian(1.5, 3).shape == (3,)  # ceil(2.25) = 3
    with pytest.raises(ValueError):
        discrete_gaussian_sq(0, 3)


def test_contribution_noise_local_is_full_and_distributed_shares_add_up_to_it():
    model = nn.Linear(999, 1)
    empty = torch.zeros(0, 999), torch.zeros(0, 1)  # no rows: the release is the noise alone
    local = DPSettings(mode="local", noise_multiplier=1.0, clip_norm=1.0)
    shared = DPSettings(mode="distributed", noise_multiplier=1.0, clip_norm=1.0, min_owners=3)
    full = math.hypot(1000, 250)  # sigma = z * Delta, Delta = sqrt(K**2 + (K/4)**2) quanta (C = 1, precision 3)
    released = noised_contribution(model, mean_bce, *empty, local, precision=3)
    assert released.shape == (1001,) and abs(released.std() / full - 1) < 0.08
    shares = [noised_contribution(model, mean_bce, *empty, shared, precision=3) for _ in range(3)]
    assert abs(shares[0].std() / (full / math.sqrt(3)) - 1) < 0.08
    assert abs(np.sum(shares, axis=0).std() / full - 1) < 0.08


# --- clipping, gradients, sampling ----------------------------------------------------------------------


def test_clipping_bounds_every_example_on_the_grid():
    k = grid_clip_bound(0.5, 4)
    assert k == 5000
    grads = torch.randn(200, 300) * torch.logspace(-5, 2, 200).view(-1, 1)  # norms from ~2e-4 to ~2e3
    grads[7] = 0.0
    grads[8, :5] = torch.tensor([1e6, -1e6, 3.0, 0.0, 1.0])
    rows = clip_to_grid(grads, 0.5, 4)
    assert rows.dtype == np.int64 and rows.shape == (200, 300)
    assert int((rows * rows).sum(axis=1).max()) <= k * k
    assert not rows[7].any()
    assert not rows[8, 5:].any() and not rows[8, 3]  # zeros stay zeros
    # rows well inside the bound are only rounded: within one quantum per value
    small = grads.norm(dim=1) * 1e4 < k - math.sqrt(300)
    assert np.abs(rows[small.numpy()] - grads[small].double().numpy() * 1e4).max() < 1
    total = clipped_sum(grads, 0.5, 4)  # rounded afresh: within one quantum per row of the sum above
    assert total.shape == (301,) and total[-1] == 200 * (k // 4) and np.abs(total[:-1] - rows.sum(axis=0)).max() <= 200


def test_one_example_weighs_at_most_the_sensitivity():
    """One example's joint vector (its clipped gradient, then its count weight c) has L2 norm <= Delta."""
    k, c = grid_clip_bound(0.5, 4), privacy.count_quanta(0.5, 4)
    assert (k, c) == (5000, 1250) and privacy.sensitivity_squared_quanta(0.5, 4) == k * k + c * c
    nan = torch.randn(1, 300)
    nan[0, 3] = float("nan")
    for row in (torch.randn(1, 300) * 1e3, torch.full((1, 300), 1e-3), torch.zeros(1, 300), nan):
        joint = clipped_sum(row, 0.5, 4)
        assert joint[-1] == c and int((joint * joint).sum()) <= k * k + c * c
    long = clipped_sum(torch.randn(1, 300) * 1e3, 0.5, 4)
    assert int((long[:-1] * long[:-1]).sum()) > (0.99 * k) ** 2  # a long gradient is clipped to nearly K


def test_stochastic_rounding_is_unbiased():
    x = torch.full((20_000, 3), 0.25e-3).double() * torch.tensor([1.0, -1.0, 2.6])  # 0.25, -0.25, 0.65 quanta
    mean = clip_to_grid(x, 1.0, 3).mean(axis=0)
    assert np.allclose(mean, [0.25, -0.25, 0.65], atol=0.02)


def test_grid_too_coarse_for_the_clip_norm_is_refused():
    with pytest.raises(ConfigError, match="raise the precision"):
        privacy.check_grid(0.01, 3, 4097)  # 10 quanta, while rounding 4097 values needs up to 64
    with pytest.raises(ConfigError, match="quanta"):
        grid_clip_bound(1e-4, 3)


def mlp(activation):
    return nn.Sequential(nn.Linear(6, 5), activation, nn.Sequential(nn.Linear(5, 4), nn.Tanh()), nn.Linear(4, 2))


class Residual(nn.Module):  # not a plain Sequential: only the loop applies
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) + x)


@pytest.mark.parametrize(
    "model, loss_fn, reduction, outputs",
    [
        (nn.Linear(6, 1), sum_squared_error, "sum", 1),
        (nn.Linear(6, 1), mean_bce, "mean", 1),
        (nn.Linear(6, 3), sum_squared_error, "sum", 3),
        (nn.Linear(6, 3, bias=False), nn.functional.mse_loss, "mean", 3),
        (mlp(nn.ReLU()), nn.functional.mse_loss, "mean", 2),
        (mlp(nn.Sigmoid()), sum_squared_error, "sum", 2),
        (Residual(), nn.functional.mse_loss, "mean", 2),
    ],
)
def test_per_example_gradients_match_the_single_example_loop(model, loss_fn, reduction, outputs):
    torch.manual_seed(3)
    x, y = torch.randn(9, 6), torch.rand(9, outputs).round()
    loop = per_example_gradients(model, loss_fn, x, y, reduction, method="loop")
    fast = per_example_gradients(model, loss_fn, x, y, reduction)
    assert fast.shape == (9, sum(p.numel() for p in model.parameters()))
    assert torch.allclose(fast, loop, atol=1e-6)
    assert hooks_apply(model) == (not isinstance(model, Residual))
    assert all(p.grad is None for p in model.parameters())
    # the per-example gradients add up to the batch gradient (times n for a mean)
    loss = loss_fn(model(x), y) * (9 if reduction == "mean" else 1)
    batch = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])
    assert torch.allclose(fast.sum(0), batch, atol=1e-5)


def test_per_example_gradients_work_under_no_grad_and_with_frozen_layers():
    model = mlp(nn.ReLU())
    model[0].weight.requires_grad_(False)
    x, y = torch.randn(4, 6), torch.randn(4, 2)
    with torch.no_grad():
        fast = per_example_gradients(model, nn.functional.mse_loss, x, y)
    loop = per_example_gradients(model, nn.functional.mse_loss, x, y, method="loop")
    assert fast.shape == (4, sum(p.numel() for p in model.parameters() if p.requires_grad))
    assert torch.allclose(fast, loop, atol=1e-6)


def test_hooks_are_refused_for_a_model_they_cannot_handle():
    with pytest.raises(ValueError, match="hooks path"):
        per_example_gradients(Residual(), nn.functional.mse_loss, torch.randn(2, 6), torch.randn(2, 2), method="hooks")


@pytest.mark.parametrize("q", [0.003, 0.05, 0.5])
def test_poisson_sampling_keeps_each_example_with_rate_q(q):
    n = 200_000
    kept = poisson_sample(n, q)
    assert kept.dtype == torch.int64 and bool((kept[1:] > kept[:-1]).all())
    assert abs(kept.numel() - n * q) < 5 * math.sqrt(n * q * (1 - q))
    halves = (kept < n // 2).sum().item(), (kept >= n // 2).sum().item()  # no position is favoured
    assert abs(halves[0] - halves[1]) < 5 * math.sqrt(n * q)
    assert poisson_sample(5, 1.0).tolist() == [0, 1, 2, 3, 4] and poisson_sample(0, 0.5).numel() == 0


def test_draws_do_not_come_from_torch_or_numpy_generators():
    def draws():
        torch.manual_seed(0)
        np.random.seed(0)
        rounding = clip_to_grid(torch.full((1, 200), 0.5e-3), 1.0, 3)  # each value 0 or 1 with p 1/2
        return poisson_sample(500, 0.5).tolist(), discrete_gaussian_sq(10**6, 20).tolist(), rounding.tolist()

    first, second = draws(), draws()
    for a, b in zip(first, second):
        assert a != b


# --- the release end to end, settings -------------------------------------------------------------------


def test_three_distributed_releases_decode_to_the_mean_clipped_gradient():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1))
    settings = DPSettings(mode="distributed", noise_multiplier=0.3, clip_norm=1.0, sampling_rate=1.0, min_owners=3)
    owners = [(torch.randn(400, 8), torch.rand(400, 1).round()) for _ in range(3)]
    total = sum(noised_contribution(model, mean_bce, x, y, settings, precision=6) for x, y in owners)
    grads = torch.cat([per_example_gradients(model, mean_bce, x, y) for x, y in owners]).double()
    clipped = grads * torch.clamp(1.0 / grads.norm(dim=1, keepdim=True), max=1.0)
    expected = clipped.mean(0).numpy()
    decoded = mean_gradient(total, settings, precision=6)
    # noise: sigma = 0.3 * Delta = 0.3 * sqrt(1 + 1/16) on each summed value, over 1,200 examples; the count's
    # noise, in examples, is 4 times that (the count weighs a quarter): 5 sigma of each
    sigma = 0.3 * math.hypot(1, 0.25) / 1200
    assert np.abs(decoded - expected).max() < 5 * sigma * (1 + 4 * np.abs(expected).max())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "field, value",
    [
        ("mode", "central"),
        ("noise_multiplier", 0.0),
        ("noise_multiplier", float("nan")),
        ("clip_norm", -1.0),
        ("sampling_rate", 0.0),
        ("sampling_rate", 1.5),
        ("epsilon", float("inf")),
        ("delta", 1.0),
        ("min_owners", 1),
        ("min_owners", True),
    ],
)
def test_invalid_settings_are_refused_naming_the_setting(field, value):
    with pytest.raises(ConfigError, match=field.split("_")[0]):
        DPSettings(**{field: value})


def test_dp_fedsgd_refuses_several_local_steps():
    require_one_local_step(1)
    with pytest.raises(ConfigError, match="exactly 1 local step"):
        require_one_local_step(5)


def test_weaker_requests_are_named():
    own = DPSettings(mode="local", noise_multiplier=1.0, sampling_rate=0.05)
    assert DPSettings(mode="local", noise_multiplier=1.2, sampling_rate=0.01, clip_norm=9.0).weaker_than(own) == []
    reasons = DPSettings(mode="distributed", noise_multiplier=0.9, sampling_rate=0.1).weaker_than(own)
    assert len(reasons) == 3 and "noise multiplier" in reasons[0]


def test_settings_the_accountant_cannot_bound_are_refused_or_bounded_by_rdp():
    """A multiplier below MIN_NOISE_MULTIPLIER is refused (prv-accountant would need unbounded memory: z = 0.03
    raised MemoryError); beyond PRV_MAX_ROUNDS rounds the budget is the RDP bound; calibration stays in range."""
    with pytest.raises(ConfigError, match="noise_multiplier"):
        DPSettings(noise_multiplier=0.1)
    assert privacy.calibrate_noise(1000.0, 1e-5, 0.05, 5) == privacy.MIN_NOISE_MULTIPLIER
    rounds = privacy.PRV_MAX_ROUNDS + 1
    budget = privacy.OwnerBudget(1e3, 1e-5, 2.0, 0.01)
    assert budget.epsilon_after(rounds) == pytest.approx(rdp_epsilon(0.01, 2.0, rounds, 1e-5))


def test_the_rdp_accountant_counts_the_bound_proven_for_the_discrete_noise():
    """accountant="rdp": without subsampling the Gaussian RDP (which the discrete Gaussian satisfies), with it Zhu &
    Wang's generic bound; both at least the PRV value, and calibrated to more noise."""
    full = privacy.OwnerBudget(3.0, 1e-5, 6.0, 1.0, accountant="rdp")
    assert full.epsilon_after(20) == pytest.approx(rdp_epsilon(1.0, 6.0, 20, 1e-5))
    assert full.epsilon_after(20) > privacy.OwnerBudget(3.0, 1e-5, 6.0, 1.0).epsilon_after(20)
    sampled = privacy.OwnerBudget(3.0, 1e-5, 2.0, 0.2, accountant="rdp")
    assert sampled.epsilon_after(10) == pytest.approx(rdp_epsilon(0.2, 2.0, 10, 1e-5, generic=True))
    z = privacy.calibrate_noise(3.0, 1e-5, 1.0, 20, "rdp")
    assert privacy.OwnerBudget(3.0, 1e-5, z, 1.0, "rdp").max_rounds(limit=40) == 20
    assert z > 6.2  # the PRV calibration's 6.25 falls short of the proven bound
    with pytest.raises(ConfigError, match="accountant"):
        DPSettings(accountant="moments")
