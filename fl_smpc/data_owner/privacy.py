"""Differential privacy on the data owner: DP-FedSGD's clipping, sampling, noise and accounting, transport-free.

The privacy unit is one example of one owner. Each round an owner that takes part releases one vector --
its contribution to the secure sum -- computed here by :func:`noised_contribution` from the global
parameters it received:

1. **Poisson sampling** (:func:`poisson_sample`): each of its ``n`` examples is kept independently with
   probability ``q`` (``sampling_rate``), from ``os.urandom``.
2. **Per-example gradients** (:func:`per_example_gradients`) of the per-example loss at the received
   parameters: exact and vectorised for ``nn.Linear`` and ``nn.Sequential`` MLPs of Linear layers and
   element-wise activations, a loop over single examples for any other model.
3. **Clipping on the fixed-point grid** (:func:`clip_to_grid`): the aggregate encodes ``x`` as the int64
   ``round(x * 10**p)`` (``p`` = precision). With ``K = floor(C * 10**p)`` (``C`` = ``clip_norm``), each
   example's gradient, in quanta, is clipped to L2 norm ``K - sqrt(m)`` (``m`` = its non-zero
   coordinates) and then rounded to the grid *stochastically* (up with probability the fractional part,
   from ``os.urandom``): unbiased, and each coordinate moves by less than one quantum, so the rounded
   gradient ``r_i`` has norm ``< K`` -- always, not only with high probability (checked in integers).
4. **The joint vector** ``v_i = (r_i, c)``: the last coordinate counts the example, with weight
   ``c = K // 4`` (:func:`count_quanta`). ``||v_i||**2 <= K**2 + c**2``: adding or removing one example
   moves the sum ``S = sum_i v_i`` by at most ``Delta = sqrt(K**2 + c**2)`` (about ``1.03 K``) quanta in L2.
   Why a quarter: the model owner needs the count only to a few percent, so nearly all of the sensitivity
   goes to the gradient -- with ``c = K`` the gradient would carry ``sqrt(2)`` times the noise, for the
   same guarantee.
5. **Noise** (:func:`discrete_gaussian`): integer noise on every one of the ``P + 1`` coordinates from the
   discrete Gaussian ``N_Z(0, s2)``, ``P(X = x) ~ exp(-x**2 / (2 * s2))`` on the integers, sampled
   *exactly* (Canonne, Kamath & Steinke 2020, Algorithm 3: rejection from a discrete Laplace, only integer
   arithmetic, no floating point) with ``secrets`` as the only source of randomness, where

   * ``mode="local"``: ``s2 = ceil(z**2 * Delta**2)`` -- the whole noise on this owner, so its guarantee
     holds even if every other party colludes with the model owner;
   * ``mode="distributed"``: ``s2 = ceil(z**2 * Delta**2 / min_owners)`` -- any ``min_owners`` honest owners
     of a round together put at least ``z**2 * Delta**2`` into the revealed sum. This rests on secure
     aggregation (no one sees a single owner's vector) and on ``min_owners`` owners being honest.

   ``z`` is ``noise_multiplier``. Rounding ``s2`` *up* to an integer only adds noise.

DP-FedSGD: one local step per round (:func:`require_one_local_step`). The accountant counts one
Poisson-subsampled Gaussian release per round; the intermediate models of several local steps would depend
on the data with no noise of their own (under distributed noise nobody's share protects them), so they are
refused rather than left unaccounted.

The model owner decodes the revealed sum with :func:`mean_gradient`: the gradient part over the (noisy)
count ``S[-1] / c``, at least 1, and takes one step ``params -= lr * mean``: post-processing, free.

**What the accountant assumes.** :class:`OwnerBudget` uses prv-accountant 0.2.0 (Gopi, Lee & Wutschitz
2021) on the *continuous* Poisson-subsampled Gaussian mechanism with noise multiplier ``z`` (local) or
:func:`accounting_noise_multiplier` (distributed), per round, and enforces its upper bound on epsilon.
What backs it for the noise actually added:

* one discrete Gaussian with integer sensitivity: its Renyi divergences are at most those of the
  continuous Gaussian of the same ``s2`` (Canonne, Kamath & Steinke 2020; Renyi divergence adds over the
  independent coordinates) -- it is ``(z**2 / 2)``-zCDP exactly like the continuous one;
* a sum of ``m`` discrete Gaussians of parameter ``s2 / m`` is not a discrete Gaussian; Kairouz, Liu &
  Steinke 2021 bound the sum of independent discrete Gaussians: it is
  ``eps**2 / 2``-zCDP with ``eps = 1 / z + tau * sqrt(d)``, ``tau = 10 * sum_{k=1}^{m-1}
  exp(-2 * pi**2 * (s2 / m) * k / (k + 1))``, ``d = P + 1``; :func:`accounting_noise_multiplier` returns
  ``1 / eps``. For any share of standard deviation above a few quanta ``tau`` underflows
  (``exp(-pi**2 * 100)`` for a standard deviation of 10 quanta): the effective multiplier *is* ``z`` in float64;
* subsampling: the PRV accountant's privacy loss distribution is the continuous Gaussian's. For the
  discrete noise this is an assumption. A bound that needs only the RDP curves above is :func:`rdp_epsilon` with
  ``generic=True`` (Zhu & Wang 2019's general bound for Poisson subsampling of *any* mechanism of the given
  RDP): rigorous for the discrete mechanism, and looser (much looser at large ``q``). docs/privacy.md
  compares the three.

Randomness: ``secrets`` (the discrete Gaussian) and ``os.urandom`` (sampling and rounding), never torch's
or numpy's generators: seeding those (``torch.manual_seed``, ``np.random.seed``) changes nothing here.
"""

import functools
import math
import os
import secrets
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, FlSmpcError

MODES = ("local", "distributed")
# How an owner counts its epsilon: "prv", prv-accountant's bound for the continuous Gaussian (tight; for the
# discrete noise an assumption), or "rdp", the RDP bound proven for the discrete noise (larger).
ACCOUNTANTS = ("prv", "rdp")
REDUCTIONS = ("sum", "mean")
# Integer RDP orders for the independent check (Mironov, Talwar & Zhang 2019 need integers).
RDP_ORDERS: Tuple[int, ...] = tuple(range(2, 65)) + (80, 96, 128, 160, 192, 256, 384, 512, 1024)
GRID_MAX = 2**31 - 1  # K * K must fit int64 for the exact norm check
PRV_EPS_ERROR = 0.01  # the PRV accountant's error on epsilon; OwnerBudget enforces the upper bound
# Beyond this many rounds the budget is the RDP bound (never below PRV): prv-accountant 0.2.0's memory grows with
# the rounds (10,000 rounds at q = 0.05: a MemoryError).
PRV_MAX_ROUNDS = 4096
# The least noise multiplier a setting may ask for: below it epsilon is in the hundreds (no meaningful
# guarantee) and prv-accountant 0.2.0 needs unbounded time and memory (z = 0.1: 23 s; z = 0.03: a MemoryError).
MIN_NOISE_MULTIPLIER = 0.3

# Layers whose per-example gradients the hooks compute exactly; activations must act element-wise.
ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Identity)


class BudgetExhausted(FlSmpcError, RuntimeError):
    """Taking one more round would spend more than the owner's epsilon: "privacy budget spent"."""


def _shown(value) -> str:
    """``repr(value)``, at most 40 characters: a refusal names a bad value without echoing a huge one."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(name: str, value, low: float, high: float, low_open: bool = True, high_open: bool = False) -> float:
    try:  # math.isfinite raises OverflowError for an int beyond float's range (10**400 in a JSON request)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:
        ok = False
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{name}: must be a finite number in {interval}, got {_shown(value)}")
    return float(value)


@dataclass(frozen=True)
class DPSettings:
    """One owner's differential-privacy settings (its own; the model owner's request is checked against them).

    mode: ``"local"`` (all the noise on each owner) or ``"distributed"`` (each owner ``1 / min_owners``
        of the variance, relying on secure aggregation and ``min_owners`` honest owners).
    noise_multiplier: ``z``, the noise's standard deviation over the L2 sensitivity ``Delta`` (about ``1.03 C``;
        :func:`sensitivity_quanta`).
    clip_norm: ``C``, the L2 bound of each example's gradient.
    sampling_rate: ``q``, each example's probability of taking part in a round (Poisson sampling).
    epsilon, delta: the owner's budget over all the rounds it takes part in.
    min_owners: honest owners whose shares together make the full noise (distributed mode; 1 in local).
    accountant: how the owner counts its epsilon (:data:`ACCOUNTANTS`): the owner's own choice, not part of a
        request.
    """

    mode: str = "distributed"
    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    sampling_rate: float = 0.05
    epsilon: float = 3.0
    delta: float = 1e-5
    min_owners: int = 3
    accountant: str = "prv"

    def __post_init__(self):
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"dp accountant: must be one of {', '.join(ACCOUNTANTS)}, got {_shown(self.accountant)}")
        if self.mode not in MODES:
            raise ConfigError(f"dp mode: must be one of {', '.join(MODES)}, got {_shown(self.mode)}")
        _number("dp noise_multiplier", self.noise_multiplier, MIN_NOISE_MULTIPLIER, 1e6, low_open=False)
        _number("dp clip_norm", self.clip_norm, 0.0, 1e9)
        _number("dp sampling_rate", self.sampling_rate, 0.0, 1.0)
        _number("dp epsilon", self.epsilon, 0.0, 1e3)
        _number("dp delta", self.delta, 0.0, 1.0, high_open=True)
        m = self.min_owners
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise ConfigError(f"dp min_owners: must be a positive integer, got {_shown(m)}")
        if self.mode == "distributed" and m < 2:
            raise ConfigError("dp min_owners: distributed noise is split over at least 2 owners; use mode 'local'")

    @classmethod
    def for_mode(
        cls, mode, noise_multiplier, clip_norm, sampling_rate, epsilon, delta, min_owners, accountant="prv"
    ) -> "DPSettings":
        """The settings of a run's flags: the noise is split over ``min_owners`` owners (distributed) or not."""
        shares = min_owners if mode == "distributed" else 1
        return cls(mode, noise_multiplier, clip_norm, sampling_rate, epsilon, delta, shares, accountant)

    @property
    def noise_shares(self) -> int:
        """Over how many owners the variance is split: ``min_owners`` (distributed) or 1 (local)."""
        return self.min_owners if self.mode == "distributed" else 1

    def weaker_than(self, own: "DPSettings") -> List[str]:
        """Why these (requested) settings give a weaker guarantee than ``own``; empty when they do not.

        The guarantee depends on ``z``, ``q``, the mode and ``min_owners`` -- and on ``clip_norm`` only through
        the distributed bound's ``tau`` (:func:`accounting_noise_multiplier`: shares of a few quanta), which the
        owner checks at the run's precision as well. A round with weaker settings than the owner's must be declined.
        """
        reasons = []
        if self.noise_multiplier < own.noise_multiplier:
            reasons.append(f"noise multiplier {self.noise_multiplier:g} < the owner's {own.noise_multiplier:g}")
        if self.sampling_rate > own.sampling_rate:
            reasons.append(f"sampling rate {self.sampling_rate:g} > the owner's {own.sampling_rate:g}")
        if self.noise_shares > own.noise_shares:
            split = _shown(self.noise_shares)
            reasons.append(f"noise split over {split} owners ({self.mode}), the owner allows {own.noise_shares}")
        return reasons


def require_one_local_step(local_steps: int) -> None:
    """ConfigError unless ``local_steps == 1``: with DP on, training is DP-FedSGD."""
    if local_steps != 1:
        raise ConfigError(
            f"local_steps: differential privacy needs exactly 1 local step per round (DP-FedSGD), got "
            f"{local_steps!r}: the accountant counts one subsampled Gaussian release per round, and the "
            "intermediate models of further local steps would depend on the data without noise of their own "
            "(with distributed noise no single owner's share protects them)"
        )


# --- randomness: os.urandom and secrets only -----------------------------------------------------------


def _uniform01(count: int) -> np.ndarray:
    """``count`` float64 values uniform on the 2**53 multiples of 2**-53 in [0, 1), from ``os.urandom``."""
    words = np.frombuffer(os.urandom(8 * count), dtype=np.uint64) >> np.uint64(11)
    return words.astype(np.float64) * 2.0**-53


def poisson_sample(n: int, q: float) -> torch.Tensor:
    """Indices (int64, ascending) of the examples kept: each of ``n`` independently with probability ``q``.

    A 64-bit word from ``os.urandom`` per example, kept when below ``floor(q * 2**64)``: the rate is ``q``
    up to 2**-64 and never above it (a lower rate is only more private).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    threshold = min(int(Fraction(q) * 2**64), 2**64 - 1) if q < 1 else None
    if threshold is None:
        return torch.arange(n, dtype=torch.int64)
    words = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
    return torch.from_numpy(np.flatnonzero(words < np.uint64(threshold)).astype(np.int64))


def _bernoulli_exp_le1(num: int, den: int) -> bool:
    """Bernoulli(exp(-num/den)) for 0 <= num <= den (CKS 2020, Algorithm 1, first case)."""
    below = secrets.randbelow
    k = 2 if num == den else 1  # Bernoulli(gamma / 1) is certain for gamma = 1
    while below(den * k) < num:  # Bernoulli(gamma / k)
        k += 1
    return k % 2 == 1


def _bernoulli_exp_minus_one() -> bool:
    """Bernoulli(exp(-1)): Algorithm 1 with gamma = 1, i.e. Bernoulli(1 / k) until the first failure."""
    below = secrets.randbelow
    k = 2
    while below(k) == 0:
        k += 1
    return k % 2 == 1


def _bernoulli_exp(num: int, den: int) -> bool:
    """Bernoulli(exp(-num/den)) for any rational num/den >= 0: one exp(-1) trial per whole unit, then the rest."""
    while num > den:
        if not _bernoulli_exp_minus_one():
            return False
        num -= den
    return _bernoulli_exp_le1(num, den)


def _discrete_laplace(t: int) -> int:
    """P(Y = y) proportional to exp(-|y| / t) on the integers, t >= 1 (CKS 2020, Algorithm 2)."""
    while True:
        u = secrets.randbelow(t)
        if not _bernoulli_exp_le1(u, t):
            continue
        v = 0
        while _bernoulli_exp_minus_one():
            v += 1
        x = u + t * v
        negative = secrets.randbits(1)
        if negative and x == 0:
            continue
        return -x if negative else x


def _discrete_gaussian_one(s2: int, t: int) -> int:
    """One draw of N_Z(0, s2) for an integer s2 >= 1, t = floor(sqrt(s2)) + 1 (CKS 2020, Algorithm 3)."""
    den = 2 * s2 * t * t
    while True:
        y = _discrete_laplace(t)
        # accept with probability exp(-(|y| - s2/t)**2 / (2 s2)) = exp(-(|y| t - s2)**2 / (2 s2 t**2))
        if _bernoulli_exp((abs(y) * t - s2) ** 2, den):
            return y


def discrete_gaussian_sq(sigma_squared: int, size: int) -> np.ndarray:
    """``size`` exact draws of the discrete Gaussian N_Z(0, sigma_squared) (an integer >= 1) as int64.

    Variance just below ``sigma_squared`` for a large one (CKS 2020: never above it).
    """
    s2 = int(sigma_squared)
    if s2 != sigma_squared or s2 < 1:
        raise ValueError(f"sigma_squared must be an integer >= 1, got {sigma_squared!r}")
    if s2 >= 2**62:
        raise ValueError(f"sigma_squared {s2} is too large for int64 noise")
    t = math.isqrt(s2) + 1
    return np.fromiter((_discrete_gaussian_one(s2, t) for _ in range(size)), dtype=np.int64, count=size)


def discrete_gaussian(sigma: Union[float, Fraction], size: int) -> np.ndarray:
    """``size`` exact draws of N_Z(0, s2) with ``s2 = ceil(sigma**2)`` (sigma in quanta) as int64."""
    return discrete_gaussian_sq(math.ceil(Fraction(sigma) ** 2), size)


# --- per-example gradients ------------------------------------------------------------------------------


def _trainable(model: nn.Module) -> List[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def hooks_apply(model: nn.Module) -> bool:
    """True when :func:`per_example_gradients` can use the exact vectorised path for ``model``:
    an ``nn.Linear``, or ``nn.Sequential`` (nested allowed) of Linear layers and element-wise activations,
    each Linear used once."""
    if isinstance(model, nn.Linear):
        return True
    if type(model) is not nn.Sequential:
        return False
    return all(isinstance(child, (*ELEMENTWISE, nn.Linear)) or hooks_apply(child) for child in model.children())


def _loss_scale(reduction: str, n: int) -> float:
    if reduction not in REDUCTIONS:
        raise ConfigError(f"loss_reduction: must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    return float(n) if reduction == "mean" else 1.0


def _hook_gradients(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    n = x.shape[0]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len({id(m) for m in linears}) != len(linears):
        raise ValueError("a Linear layer appears twice in the model")
    seen: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}

    def record(module, inputs, output):
        if id(module) in seen:
            raise ValueError("a Linear layer is called twice in one forward pass")
        seen[id(module)] = (inputs[0], output)

    handles = [m.register_forward_hook(record) for m in linears]
    try:
        loss = loss_fn(model(x), y)
    finally:
        for handle in handles:
            handle.remove()
    outputs = [seen[id(m)][1] for m in linears]
    grads = torch.autograd.grad(loss, outputs, allow_unused=True)
    scale = _loss_scale(reduction, n)
    per_param: Dict[int, torch.Tensor] = {}
    for module, grad in zip(linears, grads):
        activation = seen[id(module)][0].detach()
        g = torch.zeros_like(seen[id(module)][1]) if grad is None else grad.detach() * scale
        per_param[id(module.weight)] = (g.unsqueeze(2) * activation.unsqueeze(1)).reshape(n, -1)
        if module.bias is not None:
            per_param[id(module.bias)] = g
    return torch.cat([per_param[id(p)] for p in _trainable(model)], dim=1)


def _loop_gradients(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params = _trainable(model)
    rows = []
    for i in range(x.shape[0]):
        loss = loss_fn(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]))
    return torch.stack(rows) if rows else torch.zeros(0, sum(p.numel() for p in params))


def per_example_gradients(
    model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean", method: str = "auto"
) -> torch.Tensor:
    """Gradients of each example's own loss at the model's parameters, as a tensor ``[n, P]``.

    Columns follow ``model.parameters()`` (trainable ones, each flattened), the order the aggregate uses.
    ``loss_fn(prediction, target)`` reduces over the rows by ``reduction`` ("sum" or "mean", FLConfig's
    ``loss_reduction``); the per-example loss is ``loss_fn`` on one row. ``method``: ``"hooks"`` (exact,
    vectorised: the outer products of each Linear layer's input and its output's gradient, for the models
    :func:`hooks_apply` accepts), ``"loop"`` (one backward pass per example, any model), ``"auto"``.
    The model's ``.grad`` fields are not touched.
    """
    if method not in ("auto", "hooks", "loop"):
        raise ValueError(f"method must be auto, hooks or loop, got {method!r}")
    _loss_scale(reduction, 1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} examples but {y.shape[0]} targets")
    fast = hooks_apply(model) and x.dim() == 2
    if method == "hooks" and not fast:
        raise ValueError("the hooks path needs a Linear or a Sequential of Linear layers and activations, 2-D inputs")
    if x.shape[0] == 0:
        return torch.zeros(0, sum(p.numel() for p in _trainable(model)))
    with torch.enable_grad():  # also when called under torch.no_grad()
        if fast and method != "loop":
            grads = _hook_gradients(model, loss_fn, x, y, reduction)
        else:
            grads = _loop_gradients(model, loss_fn, x, y)
    return grads


# --- clipping on the grid, the owner's release ----------------------------------------------------------


def grid_clip_bound(clip_norm: float, precision: int) -> int:
    """``K = floor(clip_norm * 10**precision)``: the clip norm in quanta, each example's bound on the grid."""
    k = math.floor(Fraction(clip_norm) * 10**precision)
    if not 1 <= k <= GRID_MAX:
        raise ConfigError(
            f"dp clip_norm {clip_norm:g} at precision {precision} is {k} quanta: it must be 1 to {GRID_MAX}"
        )
    return k


COUNT_SCALE = 4  # the count coordinate weighs K // COUNT_SCALE quanta per example (module docstring, step 4)


def count_quanta(clip_norm: float, precision: int) -> int:
    """``c = max(K // 4, 1)``: one example's weight in the count coordinate of the joint vector, in quanta."""
    return max(grid_clip_bound(clip_norm, precision) // COUNT_SCALE, 1)


def sensitivity_squared_quanta(clip_norm: float, precision: int) -> int:
    """``Delta**2 = K**2 + c**2``: the squared L2 sensitivity of one owner's sum, in quanta**2 (exact)."""
    k = grid_clip_bound(clip_norm, precision)
    return k * k + count_quanta(clip_norm, precision) ** 2


def check_grid(clip_norm: float, precision: int, parameters: int) -> int:
    """K for these public settings; ConfigError when rounding to the grid would eat half the clip norm."""
    k = grid_clip_bound(clip_norm, precision)
    if math.sqrt(parameters) > k / 2:
        raise ConfigError(
            f"dp clip_norm {clip_norm:g} is only {k} quanta at precision {precision}; rounding {parameters} "
            f"gradient values to the grid needs up to sqrt({parameters}) = {math.sqrt(parameters):.0f} quanta "
            "of it: raise the precision"
        )
    return k


def _grid_entries(
    grads: Union[torch.Tensor, np.ndarray], clip_norm: float, precision: int
) -> Tuple[Tuple[int, int], np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero values of :func:`clip_to_grid`'s rows: (shape, row index, column index, int64 value).

    Works on the non-zero entries only: a hashed message's gradient has a few dozen of its 4,097.
    """
    k = grid_clip_bound(clip_norm, precision)
    g = grads.detach().cpu().numpy() if isinstance(grads, torch.Tensor) else np.asarray(grads)
    if g.ndim != 2:
        raise ValueError(f"expected per-example gradients [n, P], got shape {g.shape}")
    n = g.shape[0]
    rows, cols = np.nonzero(g)  # row-major: each row's entries are contiguous
    x = g[rows, cols].astype(np.float64) * 10.0**precision
    finite = np.isfinite(x)
    if not finite.all():  # a NaN row would pass the norm test; a diverged example contributes zero
        bad = np.zeros(n, dtype=bool)
        bad[rows[~finite]] = True
        keep = ~bad[rows]
        rows, cols, x = rows[keep], cols[keep], x[keep]
    nonzero = np.bincount(rows, minlength=n)
    bound = np.maximum(k - np.sqrt(nonzero) - 1e-9 * k - 1e-6, 0.0)
    norms = np.sqrt(np.bincount(rows, weights=x * x, minlength=n))
    factor = np.where(norms > bound, bound / np.maximum(norms, 1e-300), 1.0)
    x = x * factor[rows]
    low = np.floor(x)
    values = low.astype(np.int64) + (_uniform01(x.size) < x - low)
    if values.size:  # the exact check, in int64: each row's sum of squares <= K**2 (<= 2**62)
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        if int(np.add.reduceat(values * values, starts).max()) > k * k:
            raise AssertionError("a rounded gradient exceeds the clip bound")  # impossible by the argument above
    return (n, g.shape[1]), rows, cols, values


def clip_to_grid(grads: Union[torch.Tensor, np.ndarray], clip_norm: float, precision: int) -> np.ndarray:
    """Each row clipped and stochastically rounded to the grid: int64 ``[n, P]`` in quanta, row norms <= K.

    A row ``g`` (in real units) becomes ``x = g * 10**p`` scaled down to norm ``K - sqrt(m) - margin``
    when longer (``m`` = its non-zero values), then each value rounds up with probability its fractional
    part: ``E[r] = x`` and ``|r - x| < 1`` where ``x`` is not an integer, so ``||r|| < K``; checked exactly.
    Zeros stay zeros; a row with a non-finite value becomes zeros.
    """
    shape, rows, cols, values = _grid_entries(grads, clip_norm, precision)
    out = np.zeros(shape, dtype=np.int64)
    out[rows, cols] = values
    return out


def clipped_sum(grads: Union[torch.Tensor, np.ndarray], clip_norm: float, precision: int) -> np.ndarray:
    """The sum of the joint vectors ``(r_i, c)`` over the rows: int64 ``[P + 1]`` in quanta (no noise).

    ``r_i`` = :func:`clip_to_grid`; the last value is ``c`` (:func:`count_quanta`) times the number of rows.
    """
    (n, p), _, cols, values = _grid_entries(grads, clip_norm, precision)
    total = np.zeros(p + 1, dtype=np.int64)
    np.add.at(total, cols, values)
    total[p] = count_quanta(clip_norm, precision) * n
    return total


def noise_variance(settings: DPSettings, precision: int) -> int:
    """This owner's integer noise parameter s2 in quanta**2: ``ceil(z**2 * Delta**2 / shares)``."""
    sensitivity2 = sensitivity_squared_quanta(settings.clip_norm, precision)
    return math.ceil(Fraction(settings.noise_multiplier) ** 2 * sensitivity2 / settings.noise_shares)


def noised_contribution(
    model: nn.Module,
    loss_fn,
    data: torch.Tensor,
    target: torch.Tensor,
    settings: DPSettings,
    precision: int,
    reduction: str = "mean",
    method: str = "auto",
) -> np.ndarray:
    """This owner's release for one round: int64 ``[P + 1]`` on the grid (one quantum = 10**-precision).

    ``model`` holds the received global parameters (left unchanged). Poisson-samples the rows with
    ``settings.sampling_rate``, sums the clipped, rounded joint vectors ``(r_i, c)`` of the sampled rows and
    adds discrete Gaussian noise of parameter :func:`noise_variance` to every value. Summed over the owners
    (modulo 2**64 as the aggregate does), decode with :func:`mean_gradient`. Always noised, also when no
    row is sampled. Divide by ``10**precision`` for the float values the aggregate's encoder expects
    (exact back to the same integers while ``|value| < 2**53``).
    """
    parameters = sum(p.numel() for p in _trainable(model))
    check_grid(settings.clip_norm, precision, parameters)
    kept = poisson_sample(int(data.shape[0]), settings.sampling_rate)
    # index_select, not data[kept]: syft's hook on torch turns a one-element index tensor into an int
    grads = per_example_gradients(
        model, loss_fn, data.index_select(0, kept), target.index_select(0, kept), reduction, method
    )
    total = clipped_sum(grads, settings.clip_norm, precision)
    return total + discrete_gaussian_sq(noise_variance(settings, precision), total.size)


def mean_gradient(total: np.ndarray, settings: DPSettings, precision: int) -> np.ndarray:
    """The model owner's decoding of the summed releases: the mean clipped gradient (float64 ``[P]``).

    The gradient part in real units over the noisy example count ``total[-1] / c``, at least 1.
    The DP-FedSGD step is then ``params -= lr * mean_gradient(...)``.
    """
    count = max(float(total[-1]) / count_quanta(settings.clip_norm, precision), 1.0)
    return total[:-1].astype(np.float64) / 10.0**precision / count


# --- accounting -----------------------------------------------------------------------------------------


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def _log_binom(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def rdp_subsampled_gaussian(q: float, z: float, order: int) -> float:
    """RDP of order ``order`` (an integer >= 2) of one Poisson-subsampled Gaussian release.

    Mironov, Talwar & Zhang 2019 (Sec. 3.3, integer orders): ``log(A) / (order - 1)`` with
    ``A = sum_k C(order, k) (1 - q)**(order - k) q**k exp((k**2 - k) / (2 z**2))``.
    """
    if q == 1:
        return order / (2 * z * z)
    terms = [
        _log_binom(order, k) + k * math.log(q) + (order - k) * math.log1p(-q) + (k * k - k) / (2 * z * z)
        for k in range(order + 1)
    ]
    return _logsumexp(terms) / (order - 1)


def rdp_poisson_generic(q: float, base_rdp: Callable[[int], float], order: int) -> float:
    """An RDP bound of order ``order`` for Poisson subsampling of *any* mechanism with RDP ``base_rdp``.

    Zhu & Wang 2019 (Poisson subsampled RDP, their general upper bound), integer orders >= 2:
    ``log((1-q)**(a-1) (1 + (a-1) q) + C(a,2) q**2 (1-q)**(a-2) e**eps(2)
    + 3 sum_{l=3}^a C(a,l) (1-q)**(a-l) q**l e**((l-1) eps(l))) / (a - 1)``.
    """
    a = order
    if q == 1:
        return base_rdp(a)
    log1q = math.log1p(-q)
    terms = [(a - 1) * log1q + math.log1p((a - 1) * q)]
    terms.append(_log_binom(a, 2) + 2 * math.log(q) + (a - 2) * log1q + base_rdp(2))
    terms += [
        math.log(3) + _log_binom(a, j) + (a - j) * log1q + j * math.log(q) + (j - 1) * base_rdp(j)
        for j in range(3, a + 1)
    ]
    return _logsumexp(terms) / (a - 1)


def rdp_epsilon(
    q: float, z: float, rounds: int, delta: float, orders: Sequence[int] = RDP_ORDERS, generic: bool = False
) -> float:
    """Epsilon after ``rounds`` subsampled Gaussian releases by RDP composition, minimised over ``orders``.

    Conversion of Balle et al. 2020 (the one prv-accountant's RDP code uses):
    ``eps = rounds * rdp(a) + log((a-1)/a) - (log(delta) + log(a)) / (a - 1)``. ``generic=True`` uses
    :func:`rdp_poisson_generic` on the Gaussian's RDP curve ``a / (2 z**2)`` (which the discrete Gaussian
    also satisfies) instead of the Gaussian-specific formula.
    """
    if rounds == 0:
        return 0.0
    best = math.inf
    for a in orders:
        if generic:
            rdp = rdp_poisson_generic(q, lambda order: order / (2 * z * z), a)
        else:
            rdp = rdp_subsampled_gaussian(q, z, a)
        eps = rounds * rdp + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    return best


def accounting_noise_multiplier(settings: DPSettings, precision: int, dimension: int) -> float:
    """The Gaussian noise multiplier the accountant uses for ``settings`` (``dimension`` = P + 1 values).

    Local: ``z``. Distributed: ``1 / (1 / z + tau * sqrt(dimension))`` with Kairouz, Liu & Steinke 2021's
    ``tau = 10 * sum_{k=1}^{m-1} exp(-2 pi**2 s2_share k / (k + 1))`` for the sum of ``m = min_owners``
    discrete Gaussians of parameter ``s2_share`` each, and ``s2_share`` in quanta**2 (about ``z**2 * Delta**2 / m``).
    Equal to ``z`` whenever ``tau`` underflows, i.e. for any share of more than ~9 quanta.
    """
    z = settings.noise_multiplier
    if settings.mode == "local":
        return z
    m, share = settings.min_owners, noise_variance(settings, precision)
    tau = 10 * sum(math.exp(-2 * math.pi**2 * share * k / (k + 1)) for k in range(1, m))
    return 1 / (1 / z + tau * math.sqrt(dimension))


@functools.lru_cache(maxsize=32)
def _prv_accountant(q: float, z: float, max_rounds: int, delta: float):
    """prv-accountant's accountant for these settings; cached: building one takes about a second, and every owner
    of an in-process run (and every budget of a worker) with the same settings asks for the same one."""
    from prv_accountant import PoissonSubsampledGaussianMechanism, PRVAccountant

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PRVAccountant(
            prvs=[PoissonSubsampledGaussianMechanism(sampling_probability=q, noise_multiplier=z)],
            eps_error=PRV_EPS_ERROR,
            delta_error=delta / 1000,
            max_self_compositions=[max_rounds],
        )


def prv_epsilon(q: float, z: float, rounds: int, delta: float) -> Tuple[float, float, float]:
    """(lower bound, estimate, upper bound) of epsilon after ``rounds`` releases, from prv-accountant."""
    if rounds == 0:
        return (0.0, 0.0, 0.0)
    lower, estimate, upper = _prv_accountant(q, z, rounds, delta).compute_epsilon(delta, [rounds])
    return (float(lower), float(estimate), float(upper))


@functools.lru_cache(maxsize=4096)
def _epsilon_upper(accountant, delta: float, rounds: int) -> float:
    """The accountant's upper bound on epsilon after ``rounds``; cached, so owners with the same settings share it."""
    return float(accountant.compute_epsilon(delta, [rounds])[2])


@dataclass(frozen=True)
class _RdpFallback:
    """Stands in for the PRV accountant where prv-accountant 0.2.0 cannot discretise the privacy loss
    ("Discrete mean differs from continuous mean significantly", seen for multipliers below ~0.5): the RDP
    bound, never below the PRV value. Equal settings hash equal, so their epsilons are cached together."""

    q: float
    z: float
    generic: bool = False  # Zhu & Wang's bound for Poisson subsampling of any mechanism of the Gaussian's RDP

    def compute_epsilon(self, delta: float, rounds: Sequence[int]) -> Tuple[float, float, float]:
        eps = rdp_epsilon(self.q, self.z, rounds[0], delta, generic=self.generic)
        return (0.0, eps, eps)


class OwnerBudget:
    """One owner's privacy budget: epsilon after k rounds, whether it may take one more, what each round spent.

    Counts the rounds this owner takes part in (one Poisson-subsampled Gaussian release each, with
    ``noise_multiplier`` -- use :meth:`for_settings` for the distributed case's effective multiplier --
    and ``sampling_rate``); epsilon is prv-accountant's *upper* bound at ``delta``. An owner asks
    :meth:`can_take_round` before training and calls :meth:`take_round` when it releases its vector.
    """

    def __init__(
        self, epsilon: float, delta: float, noise_multiplier: float, sampling_rate: float, accountant: str = "prv"
    ):
        if accountant not in ACCOUNTANTS:
            raise ConfigError(f"dp accountant: must be one of {', '.join(ACCOUNTANTS)}, got {_shown(accountant)}")
        self.accountant = accountant
        self.epsilon = _number("dp epsilon", epsilon, 0.0, 1e3)
        self.delta = _number("dp delta", delta, 0.0, 1.0, high_open=True)
        self.noise_multiplier = _number("dp noise_multiplier", noise_multiplier, 0.0, 1e6)
        self.sampling_rate = _number("dp sampling_rate", sampling_rate, 0.0, 1.0)
        self.spent: List[float] = []  # epsilon after each round taken (cumulative)
        self._cache: Dict[int, float] = {0: 0.0}
        self._cap = 0
        self._accountant: Any = None

    @classmethod
    def for_settings(cls, settings: DPSettings, precision: int, dimension: int) -> "OwnerBudget":
        """The budget of an owner releasing ``dimension`` (= P + 1) values per round with ``settings``."""
        z = accounting_noise_multiplier(settings, precision, dimension)
        return cls(settings.epsilon, settings.delta, z, settings.sampling_rate, settings.accountant)

    @property
    def rounds(self) -> int:
        """Rounds taken so far."""
        return len(self.spent)

    @property
    def epsilon_spent(self) -> float:
        return self.spent[-1] if self.spent else 0.0

    def epsilon_after(self, rounds: int) -> float:
        """Epsilon (upper bound) after ``rounds`` releases."""
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        if rounds not in self._cache:
            if self._accountant is None or rounds > self._cap:
                # a power of two: the same discretisation for the owner and for calibrate_noise, at any round
                self._cap = max(64, 1 << (rounds - 1).bit_length())
                self._accountant = self._make_accountant()
            self._cache[rounds] = _epsilon_upper(self._accountant, self.delta, rounds)
        return self._cache[rounds]

    def restore(self, rounds: int) -> None:
        """Mark ``rounds`` rounds as taken (spent before a restart, from the owner's ledger); ConfigError beyond it."""
        if rounds > 0 and self.epsilon_after(rounds) > self.epsilon:
            raise ConfigError(f"dp: {rounds} rounds spent already exceed epsilon {self.epsilon:g}")
        self.spent = [self.epsilon_after(k) for k in range(1, rounds + 1)]

    def _make_accountant(self):
        """PRV for ``self._cap`` rounds; the RDP bound (never below it) where PRV cannot discretise, or would
        need unbounded memory (a multiplier below MIN_NOISE_MULTIPLIER: distributed shares of ~1 quantum; more
        than PRV_MAX_ROUNDS rounds)."""
        if self.accountant == "rdp":  # the bound proven for the discrete noise: generic subsampling for q < 1
            return _RdpFallback(self.sampling_rate, self.noise_multiplier, generic=self.sampling_rate < 1)
        if self.noise_multiplier >= MIN_NOISE_MULTIPLIER and self._cap <= PRV_MAX_ROUNDS:
            try:
                return _prv_accountant(self.sampling_rate, self.noise_multiplier, self._cap, self.delta)
            except RuntimeError:
                pass
        return _RdpFallback(self.sampling_rate, self.noise_multiplier)

    def can_take_round(self) -> bool:
        """Whether one more round keeps epsilon within the budget."""
        return self.epsilon_after(self.rounds + 1) <= self.epsilon

    def take_round(self) -> float:
        """Record one more round and return epsilon spent so far; BudgetExhausted if it would exceed the budget."""
        if not self.can_take_round():
            raise BudgetExhausted(
                f"privacy budget spent: round {self.rounds + 1} would take epsilon to "
                f"{self.epsilon_after(self.rounds + 1):.4g} > {self.epsilon:g} (delta {self.delta:g})"
            )
        self.spent.append(self.epsilon_after(self.rounds + 1))
        return self.spent[-1]

    def max_rounds(self, limit: int = 100_000) -> int:
        """The most rounds the budget allows (at most ``limit``), by bisection on :meth:`epsilon_after`."""
        if self.epsilon_after(1) > self.epsilon:
            return 0
        low, high = 1, 2
        while high <= limit and self.epsilon_after(high) <= self.epsilon:
            low, high = high, 2 * high
        if high > limit:
            return limit if self.epsilon_after(limit) <= self.epsilon else self._bisect(low, limit)
        return self._bisect(low, high)

    def _bisect(self, low: int, high: int) -> int:
        while high - low > 1:  # epsilon_after(low) <= budget < epsilon_after(high)
            middle = (low + high) // 2
            if self.epsilon_after(middle) <= self.epsilon:
                low = middle
            else:
                high = middle
        return low

    def history(self) -> List[Dict[str, float]]:
        """Per round taken: its number, epsilon spent in it and in total (public)."""
        rows, before = [], 0.0
        for number, total in enumerate(self.spent, 1):
            rows.append({"round": number, "epsilon_round": total - before, "epsilon": total})
            before = total
        return rows


@functools.lru_cache(maxsize=64)
def calibrate_noise(epsilon: float, delta: float, sampling_rate: float, rounds: int, accountant: str = "prv") -> float:
    """The least noise multiplier (to 0.5 %) with which ``rounds`` rounds fit into the budget (epsilon, delta).

    Checked with :class:`OwnerBudget` itself, so an owner with these settings takes every one of the
    ``rounds`` rounds and declines the next. Public: settings only. Takes seconds (prv-accountant).
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"dp rounds: must be a positive integer, got {rounds!r}")

    def fits(z: float) -> bool:
        return OwnerBudget(epsilon, delta, z, sampling_rate, accountant).epsilon_after(rounds) <= epsilon

    high = 0.5
    generic = accountant == "rdp" and sampling_rate < 1  # the rdp accountant's own bound; RDP bounds PRV from above
    while rdp_epsilon(sampling_rate, high, rounds, delta, generic=generic) > epsilon:  # then high fits
        high *= 2
        if high > 1e6:
            raise ConfigError(f"dp epsilon {epsilon:g}: no noise multiplier up to 1e6 fits {rounds} rounds")
    low = high / 2
    while low > MIN_NOISE_MULTIPLIER and fits(low):
        low, high = low / 2, low
    if low <= MIN_NOISE_MULTIPLIER:
        if fits(MIN_NOISE_MULTIPLIER):  # any allowed noise fits: the least one
            return MIN_NOISE_MULTIPLIER
        low = MIN_NOISE_MULTIPLIER
    while high / low > 1.005:  # low does not fit, high does
        middle = math.sqrt(low * high)
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def sensitivity_quanta(clip_norm: float, precision: int) -> float:
    """The L2 sensitivity of one owner's sum in quanta: ``sqrt(K**2 + c**2)``."""
    return math.sqrt(sensitivity_squared_quanta(clip_norm, precision))


def noise_std_quanta(settings: DPSettings, precision: int) -> float:
    """The standard-deviation parameter of this owner's noise, in quanta (``sqrt`` of :func:`noise_variance`)."""
    return math.sqrt(noise_variance(settings, precision))


__all__ = [
    "BudgetExhausted",
    "DPSettings",
    "OwnerBudget",
    "accounting_noise_multiplier",
    "calibrate_noise",
    "check_grid",
    "clip_to_grid",
    "clipped_sum",
    "count_quanta",
    "discrete_gaussian",
    "discrete_gaussian_sq",
    "grid_clip_bound",
    "hooks_apply",
    "mean_gradient",
    "noise_std_quanta",
    "noise_variance",
    "noised_contribution",
    "per_example_gradients",
    "poisson_sample",
    "prv_epsilon",
    "rdp_epsilon",
    "rdp_poisson_generic",
    "rdp_subsampled_gaussian",
    "require_one_local_step",
    "sensitivity_quanta",
    "sensitivity_squared_quanta",
]
