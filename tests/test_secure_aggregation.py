"""Secure averaging: exact to one quantum, private in syft's own traffic, and why we never divide shares."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from fl_smpc.data import send_partitions, split_dataset, toy_dataset
from fl_smpc.federated import run_round
from fl_smpc.training import train_locally
from fl_smpc.config import FLConfig
from fl_smpc.workers import virtual_workers
from fl_smpc.secure_aggregation import (
    AggregationError, secure_average, secure_average_per_tensor, secure_sum, uncompressed_messages,
)
from helpers import remote_vectors
from reference import local_train, seed_model

PRECISION = 3
QUANTUM = 10.0 ** -PRECISION


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_secure_sum_average_is_within_one_quantum(make_workers, n):
    """Every element of every trial: |secure mean - plaintext mean| <= 10**-p (+ float32 rounding)."""
    workers = make_workers(n)
    generator = torch.Generator().manual_seed(n)
    worst = 0.0
    for trial in range(20):
        scale = 10.0 ** (trial % 5 - 2)  # 0.01 ... 100, negative and positive values
        values = [torch.randn(64, generator=generator) * scale for _ in workers]
        pointers = [v.send(w) for v, w in zip(values, workers)]
        secure = secure_sum(pointers, workers, PRECISION) / n
        plain = torch.stack(values).mean(0)
        error = (secure - plain).abs().max().item()
        worst = max(worst, error)
        assert error <= QUANTUM + 1e-6 * scale * 10, f"trial {trial}: error {error}"
    print(f"n={n}: largest secure-vs-plaintext error {worst:.3g}")


def test_secure_average_of_models_matches_plaintext_mean(workers):
    models = [seed_model(s) for s in range(3)]
    remote = [m.copy().send(w) for m, w in zip(models, workers)]
    flat = secure_average(remote, workers, PRECISION)
    per_tensor = secure_average_per_tensor(remote, workers, PRECISION)
    plain = torch.stack([parameters_to_vector(m.parameters()) for m in models]).mean(0)
    assert (flat - plain).abs().max() <= QUANTUM
    assert (torch.cat([t.flatten() for t in per_tensor]) - plain).abs().max() <= QUANTUM


def test_seed_literal_division_on_shares_is_wrong(workers):
    """Documents syft 0.2.9's behaviour, not ours: ``(a + b + c) / 3`` on 3-party shares breaks.

    syft divides every share separately; the wrap-around of the ring then leaves some values off by
    about 2**64 / 3 / 10**3 = 6.1e15. This is why secure_sum reveals the sum and divides afterwards.
    """
    generator = torch.Generator().manual_seed(0)
    wrong = 0
    for _ in range(20):
        values = [torch.randn(4, generator=generator) * 0.5 for _ in workers]
        shares = [v.fix_prec().share(*workers) for v in values]
        literal = ((shares[0] + shares[1] + shares[2]) / 3).get().float_prec()
        wrong += int(((literal - sum(values) / 3).abs() > 1e12).sum())
    assert wrong > 0


class TrafficRecorder:
    """Wraps the model owner's ``send_msg`` (the one path of every message it exchanges with workers)
    and collects every plaintext tensor inside the deserialised responses it receives."""

    def __init__(self, local_worker):
        self.local_worker, self.original = local_worker, local_worker.send_msg
        self.received = []

    def __enter__(self):
        def send_msg(message, location):
            response = self.original(message, location)
            self.received.extend(plain_tensors(response))
            return response

        self.local_worker.send_msg = send_msg
        return self

    def __exit__(self, *exc):
        del self.local_worker.send_msg


def plain_tensors(obj):
    """All native tensors in a syft response, looking through wrappers, FixedPrecision and AdditiveSharing."""
    if isinstance(obj, (list, tuple, set)):
        return [t for item in obj for t in plain_tensors(item)]
    if isinstance(obj, dict):
        return plain_tensors(list(obj.values()))
    if hasattr(obj, "child"):
        return plain_tensors(obj.child)
    if isinstance(obj, torch.Tensor):
        return [obj.detach().clone()]
    return []


def leaks(received, secrets_):
    """Tensors among ``received`` equal to a secret, as floats or fixed-precision encoded (truncated or rounded)."""
    found = []
    for secret in secrets_:
        encodings = [(secret * 10 ** PRECISION).long(), (secret.double() * 10 ** PRECISION).round().long()]
        for t in received:
            if t.shape == secret.shape and (
                (t.is_floating_point() and torch.allclose(t, secret, atol=1e-6))
                or (not t.is_floating_point() and any(torch.equal(t.long(), e) for e in encodings))
            ):
                found.append(t)
    return found


def individual_models(model, parts, config):
    """Each owner's plaintext model after local training -- what must never reach the model owner."""
    secrets_ = []
    for x, y in parts:
        local = nn.Linear(3, 1)
        local.load_state_dict(model.state_dict())
        local_train(local, x, y, config.lr, config.local_steps)
        secrets_ += [p.detach().clone() for p in local.parameters()]
        secrets_.append(parameters_to_vector(local.parameters()).detach().clone())
    return secrets_


def test_model_owner_never_receives_an_individual_model(hook, workers):
    config = FLConfig(seed=0)
    model = seed_model(0)
    data, target = toy_dataset()
    parts = split_dataset(data, target, 3)
    secrets_ = individual_models(model, parts, config)
    remote_data = send_partitions(parts, workers)
    start = model.copy()

    with TrafficRecorder(hook.local_worker) as traffic:
        run_round(model, workers, remote_data, config)
    assert traffic.received, "the recorder saw no tensors at all"
    assert leaks(traffic.received, secrets_) == []

    # The detector does catch the seed's way of doing it -- bob_model.get() after local training --
    # which also shows that the plain-PyTorch secrets are exactly what syft trains on bob.
    bob_model = start.send(workers[0])
    train_locally(bob_model, *remote_data[0], config.lr, config.local_steps)
    with TrafficRecorder(hook.local_worker) as traffic:
        bob_model.get()
    assert len(leaks(traffic.received, secrets_[:2])) == 2  # bob's weight and bias


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_parameters_are_refused_naming_the_worker(workers, bad):
    rows = [[0.0, 1, 2], [0.0, 1, 2], [0.0, bad, 2]]
    with pytest.raises(AggregationError, match="'jane' holds non-finite") as err:
        secure_average(remote_vectors(rows, workers), workers, PRECISION)
    assert err.value.worker == "jane"


def test_a_sum_that_would_overflow_the_field_is_refused(workers):
    """4e15 * 10**3 fits in int64 for one owner (syft accepts it) but the sum of three does not."""
    rows = [[4.0e15, 1.0]] * 3
    pointers = [t.send(w) for t, w in zip([torch.tensor(r) for r in rows], workers)]
    unchecked = secure_sum(pointers, workers, PRECISION) / 3
    assert abs(unchecked[0].item() - 4.0e15) > 1e14  # why the check exists: the ring wraps around
    with pytest.raises(AggregationError, match="'bob' .* overflow") as err:
        secure_average(remote_vectors(rows, workers), workers, PRECISION)
    assert err.value.worker == "bob"


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
