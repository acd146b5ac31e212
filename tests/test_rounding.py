"""Fixed-precision encoding rounds to nearest: secure averages are unbiased and do not drift.

syft's ``fix_prec`` truncates toward zero; ``secure_sum`` first applies ``rounded_for_encoding`` on
each owner. The statistical tests run a second time with that step removed (syft's truncation),
to show they catch the bias.
"""
import pytest
import torch

from fl_smpc import secure_aggregation
from fl_smpc.secure_aggregation import rounded_for_encoding, secure_sum
from fl_smpc.workers import virtual_workers

PRECISION = 3
QUANTUM = 10.0 ** -PRECISION


@pytest.fixture(params=["rounded", "truncated"])
def encoding(request, monkeypatch):
    if request.param == "truncated":
        monkeypatch.setattr(secure_aggregation, "rounded_for_encoding", lambda ptr, precision_fractional: ptr)
    return request.param


def encode(values: torch.Tensor, precision: int) -> torch.Tensor:
    """What fix_prec makes of rounded_for_encoding's output: the integers that get shared."""
    return rounded_for_encoding(values, precision).fix_prec(precision_fractional=precision).child.child


@pytest.mark.parametrize("precision", [0, 3, 6, 12])
def test_encoding_is_round_to_nearest_even_exactly(precision):
    """Across magnitudes, including exact ties (multiples of 1/16 are halves of a quantum at p=3)."""
    g = torch.Generator().manual_seed(precision)
    values = torch.cat([
        *[(torch.rand(2000, generator=g) - 0.5) * 10.0 ** e for e in range(-8, 12)],
        torch.arange(-400, 400).float() / 16, torch.tensor([0.0, -0.0]),
    ])
    values = values[values.double().abs() * 10 ** precision < 2 ** 53 / 11]  # the documented exact range
    expected = (values.double() * 10 ** precision).round().long()  # float64: exact product, ties to even
    assert torch.equal(encode(values, precision), expected)
    truncated = (values * 10 ** precision).long()  # syft's own encoding differs, mostly by one toward zero
    assert not torch.equal(truncated, expected)


def test_encoding_runs_on_the_owner(hook):
    """Through a pointer, as secure_sum does; 123456.789 shows why float64: a float32 product is off by 3."""
    values = torch.tensor([0.0019, -0.0019, 0.0625, 0.1875, 123456.789])
    with virtual_workers(["round0"], hook) as (owner,):
        ptr = rounded_for_encoding(values.send(owner), PRECISION)
        assert ptr.location is owner
        encoded = ptr.fix_prec(precision_fractional=PRECISION).get().child.child
    assert torch.equal(encoded, (values.double() * 10 ** PRECISION).round().long())
    assert encoded[:2].tolist() == [2, -2]  # truncation: [1, -1]
    assert ((values * 10 ** PRECISION).long() - encoded).abs().max() >= 3


def test_secure_average_is_unbiased(make_workers, encoding):
    """20,000 averages of 3 owners' values: the mean error toward zero is ~0 (truncation: ~ -0.2 quantum).

    Truncation moves each owner's value toward zero by half a quantum on average; measured toward the
    sign of the average, 3 independent owners give -0.5 * (2 / pi) * asin(1 / sqrt(3)) = -0.196 quantum.
    """
    workers = make_workers(3)
    g = torch.Generator().manual_seed(0)
    values = [torch.randn(20_000, generator=g) for _ in workers]
    secure = secure_sum([v.send(w) for v, w in zip(values, workers)], workers, PRECISION) / 3
    plain = torch.stack(values).double().mean(0)
    error = (secure.double() - plain) / QUANTUM
    toward_zero_bias = float((error * plain.sign()).mean())
    print(f"{encoding}: mean error toward zero {toward_zero_bias:+.4f} quantum, largest {error.abs().max():.3f}")
    if encoding == "rounded":
        assert abs(toward_zero_bias) < 0.05
        assert error.abs().max() <= 0.5 + 1e-3  # each owner off by at most half a quantum (+ float32 result)
    else:
        assert toward_zero_bias < -0.15


def test_repeated_secure_averaging_does_not_drift(make_workers, encoding):
    """250 rounds of FedAvg-like updates: the model is re-averaged from the owners' slightly changed copies.

    Rounding errors are independent from round to round, so the secure model random-walks around the
    plaintext one (~0.17 quantum per round, ~2.6 quanta per value after 250 rounds). Truncation of these
    positive values loses half a quantum every round; 50 rounds show it (~25 quanta).
    """
    rounds = 250 if encoding == "rounded" else 50
    workers = make_workers(3)
    g = torch.Generator().manual_seed(0)
    model = 1 + torch.rand(16, generator=g)
    plain = model.double()
    for _ in range(rounds):
        held = [model + torch.randn(16, generator=g) * 0.01 for _ in workers]  # each owner's local update
        plain = plain + torch.stack([h.double() - model.double() for h in held]).mean(0)
        model = secure_sum([h.send(w) for h, w in zip(held, workers)], workers, PRECISION) / 3
    drift = (model.double() - plain) / QUANTUM
    print(f"{encoding}: drift after {rounds} averagings mean {drift.mean():+.2f}, largest {drift.abs().max():.2f} quanta")
    if encoding == "rounded":
        assert abs(float(drift.mean())) < 2 and float(drift.abs().max()) < 10
    else:
        assert float(drift.mean()) < -0.4 * rounds
