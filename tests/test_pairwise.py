"""Pairwise masking: same averages as syft's shares, nothing but masked vectors reach the model owner,
masks are uniform, redo after a dropout, same run in-process and over websockets.

Every security check also runs against a weakened owner (masks off, a key sent along, a non-uniform
mask), to show the check catches the leak.
"""
import os

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives import serialization
from torch import nn
from torch.nn.utils import parameters_to_vector

from fl_smpc import FLConfig, pairwise_owner
from fl_smpc.config import ConfigError
from fl_smpc.data import send_partitions, split_dataset, toy_dataset
from fl_smpc.errors import AggregationError, WorkerUnreachable
from fl_smpc.federated import run_round, train_federated
from fl_smpc.pairwise import command, pairwise_average, pairwise_sum, session_for
from fl_smpc.network.tls import create_federation
from fl_smpc.pairwise_owner import PairwiseOwner, encode, masked_encoding
from fl_smpc.secure_aggregation import secure_sum
from fl_smpc.workers import virtual_workers
from helpers import raw_bytes, remote_vectors
from reference import fedavg_rounds, local_train, seed_model

PRECISION = 3
QUANTUM = 10.0 ** -PRECISION


@pytest.mark.parametrize("n", range(2, 11))
def test_pairwise_and_additive_averages_agree_within_one_quantum(make_workers, n):
    """Both encode each owner's value to an integer within one quantum (rounded vs truncated), so their
    averages differ by at most one quantum; the pairwise one is within half a quantum of the true mean."""
    workers = make_workers(n)
    generator = torch.Generator().manual_seed(n)
    for trial in range(4):
        scale = 10.0 ** (trial - 1)  # 0.1 ... 100
        values = [torch.randn(64, generator=generator) * scale for _ in workers]
        pointers = [v.send(w) for v, w in zip(values, workers)]
        pairwise = pairwise_sum(pointers, workers, PRECISION)
        additive = secure_sum(pointers, workers, PRECISION) / n
        float32 = 1e-6 * scale * 10  # decoding a sum of n values in float32
        assert pairwise.owners == tuple(w.id for w in workers)
        assert (pairwise.total / n - additive).abs().max().item() <= QUANTUM + float32
        assert (pairwise.total / n - torch.stack(values).mean(0)).abs().max().item() <= QUANTUM / 2 + float32


def test_owners_of_a_pair_derive_the_same_key_fresh_for_every_run(hook):
    runs = []
    for _ in range(2):  # two runs with the same owner names: new worker objects, so new keys
        with virtual_workers(["k0", "k1", "k2"], hook) as workers:
            session = session_for(workers)
            a, b, c = (w._pairwise for w in workers)
            assert a.pair_keys["k1"] == b.pair_keys["k0"] and len(a.pair_keys["k1"]) == 32
            assert len({a.pair_keys["k1"], a.pair_keys["k2"], b.pair_keys["k2"]}) == 3
            assert session_for(workers) is session  # later rounds of the run reuse the keys
            runs.append((session.id, a.pair_keys["k1"]))
    assert runs[0][0] != runs[1][0] and runs[0][1] != runs[1][1]


class TrafficRecorder:
    """Everything the model owner receives: wraps its ``send_msg``, the one path of all its exchanges."""

    def __init__(self, local_worker):
        self.local_worker, self.original = local_worker, local_worker.send_msg
        self.responses = []

    def __enter__(self):
        def send_msg(message, location):
            response = self.original(message, location)
            self.responses.append(response)
            return response

        self.local_worker.send_msg = send_msg
        return self

    def __exit__(self, *exc):
        del self.local_worker.send_msg

    def items(self, kind):
        found = []

        def walk(obj):
            if isinstance(obj, (list, tuple, set)):
                for item in obj:
                    walk(item)
            elif isinstance(obj, dict):
                walk(list(obj.values()))
            elif isinstance(obj, kind):
                found.append(obj)
            elif hasattr(obj, "child"):
                walk(obj.child)

        walk(self.responses)
        return found


def owner_secrets(workers):
    """Each owner's private key, pair keys and public key, read from the owner objects."""
    keys = []
    for worker in workers:
        session = worker._pairwise
        keys.append(session.private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                      serialization.NoEncryption()))
        keys.append(pairwise_owner.raw_public_key(session.private_key))
        keys += list(session.pair_keys.values())
    return keys


def unmasked(values, precision, keys, me, round_, attempt):
    return encode(values, precision)


AGREE_KEYS = PairwiseOwner.pairwise_agree_keys


def key_attached(self, session, owners):
    """An owner that also sends the model owner its pair keys."""
    AGREE_KEYS(self, session, owners)
    return b"".join(self._pairwise.pair_keys.values())


@pytest.mark.parametrize("weakness", [None, "unmasked", "key sent"])
def test_model_owner_sees_no_key_and_no_unmasked_vector(hook, workers, monkeypatch, weakness):
    if weakness == "unmasked":
        monkeypatch.setattr(pairwise_owner, "masked_encoding", unmasked)
    if weakness == "key sent":
        monkeypatch.setattr(PairwiseOwner, "pairwise_agree_keys", key_attached)
    config = FLConfig(seed=0, aggregation="pairwise")
    model = seed_model(0)
    data, target = toy_dataset()
    parts = split_dataset(data, target, 3)
    remote_data = send_partitions(parts, workers)
    secrets = []
    for x, y in parts:  # each owner's locally trained model, in plain torch
        local = seed_model(0)
        local_train(local, x, y, config.lr, config.local_steps)
        vector = parameters_to_vector(local.parameters()).detach()
        secrets += [vector, *(p.detach() for p in local.parameters())]
    with TrafficRecorder(hook.local_worker) as traffic:
        run_round(model, workers, remote_data, config)

    received = traffic.items(bytes)
    assert sum(len(b) == 8 * 4 for b in received) == 3, "one masked 4-parameter vector per owner"
    leaked_keys = [k for k in set(owner_secrets(workers)) if any(k in b for b in received)]
    integer_vectors = [np.frombuffer(b, dtype="<i8") for b in received if len(b) % 8 == 0]
    encodings = [encode(s.numpy().astype(np.float64), PRECISION) for s in secrets]
    encodings += [(s.double() * 10 ** PRECISION).long().numpy() for s in secrets]  # truncated, as fix_prec does
    leaked_vectors = [v for v in integer_vectors if any(v.shape == e.shape and (v == e).all() for e in encodings)]
    leaked_vectors += [s for s in secrets for t in traffic.items(torch.Tensor)
                       if t.shape == s.shape and torch.allclose(t.float(), s, atol=1e-6)]
    if weakness is None:
        assert leaked_keys == [] and leaked_vectors == []
    elif weakness == "unmasked":
        assert leaked_keys == [] and len(leaked_vectors) == 3  # each owner's encoded vector
    else:
        assert len(leaked_keys) == 3 and leaked_vectors == []  # the pair keys bob-alice, bob-jane, alice-jane


def uniform_int64(values: np.ndarray) -> bool:
    """Each of the 64 bits is 1 in half of the values and the top byte is flat, both to within 6 sigma."""
    n = values.size
    bits = np.unpackbits(values.view(np.uint8).reshape(n, 8), axis=1).sum(axis=0)
    bits_ok = (np.abs(bits - n / 2) < 6 * np.sqrt(n) / 2).all()
    top = np.bincount(values.view(np.uint8).reshape(n, 8)[:, 7], minlength=256)
    chi2 = ((top - n / 256) ** 2 / (n / 256)).sum()  # 255 degrees of freedom: mean 255, sd 22.6
    return bool(bits_ok and chi2 < 255 + 6 * 22.6)


def uncorrelated(values: np.ndarray, secret: np.ndarray) -> bool:
    """|Pearson r| below 6 / sqrt(n), between the vector and the secret and their low 16 bits."""
    n = values.size
    pairs = [(values.astype(np.float64), secret), (values & 0xFFFF, encode(secret, PRECISION) & 0xFFFF)]
    return all(abs(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1]) < 6 / np.sqrt(n) for a, b in pairs)


def small_masks(values, precision, keys, me, round_, attempt):
    """A weak mask: uniform, but over 0..2**16 only."""
    masks = np.frombuffer(os.urandom(2 * values.size), dtype="<u2").astype(np.int64)
    return encode(values, precision) + masks


@pytest.mark.parametrize("mask, expected", [(masked_encoding, True), (unmasked, False), (small_masks, False)],
                         ids=["aes-ctr", "unmasked", "16-bit masks"])
def test_a_masked_vector_is_uniform_and_uncorrelated_with_the_secret(mask, expected):
    n = 1 << 16
    secret = np.linspace(-1000.0, 1000.0, n, dtype=np.float32).astype(np.float64)  # a smooth, easily seen secret
    vector = mask(secret, PRECISION, {"peer": os.urandom(32)}, "me", 1, 0)
    assert uniform_int64(vector) == expected
    assert uncorrelated(vector, secret) == expected


def test_full_run_matches_plaintext_fedavg_and_additive_run():
    config = FLConfig(seed=0, aggregation="pairwise")
    history = train_federated(config)
    additive = train_federated(FLConfig(seed=0))
    data, target = toy_dataset()
    reference = fedavg_rounds(seed_model(0), split_dataset(data, target, 3), config.rounds, config.lr,
                              config.local_steps)
    for r, add, (losses, loss, params, _metrics) in zip(history.rounds, additive.rounds, reference):
        flat = torch.cat([r.model["weight"].flatten(), r.model["bias"].flatten()])
        # each average within half a quantum; local SGD here does not amplify a parameter error
        assert (flat - params).abs().max().item() <= r.round * QUANTUM / 2 + 1e-6
        assert r.global_loss == pytest.approx(loss, abs=20 * r.round * QUANTUM)
        assert list(r.worker_losses.values()) == pytest.approx(losses, abs=20 * r.round * QUANTUM)
        for name in r.model:
            assert torch.allclose(r.model[name], add.model[name], atol=r.round * QUANTUM, rtol=0)
    assert history.to_dict()["config"]["aggregation"] == "pairwise"


def test_an_owner_dropping_out_redoes_the_round_among_the_others(make_workers, monkeypatch):
    workers = make_workers(4)
    values = [torch.full((5,), float(i)) for i in range(4)]
    pointers = [v.send(w) for v, w in zip(values, workers)]
    pairwise_sum(pointers, workers, PRECISION)  # round 1: everyone
    asked = []
    original = PairwiseOwner.pairwise_masked_vector

    def recording(self, tensor_id, session, round_, attempt, owners, precision):
        asked.append((self.id, round_, attempt, tuple(owners)))
        if self.id == "w2":
            raise WorkerUnreachable("w2", "connection lost")
        return original(self, tensor_id, session, round_, attempt, owners, precision)

    monkeypatch.setattr(PairwiseOwner, "pairwise_masked_vector", recording)
    result = pairwise_sum(pointers, workers, PRECISION)
    assert result.owners == ("w0", "w1", "w3")
    assert torch.allclose(result.total, torch.full((5,), 0.0 + 1 + 3))
    everyone, remaining = ("w0", "w1", "w2", "w3"), ("w0", "w1", "w3")
    assert sorted(asked) == sorted([(w, 2, 0, everyone) for w in everyone] + [(w, 2, 1, remaining) for w in remaining])
    with pytest.raises(WorkerUnreachable, match="w2"):  # two owners of which one drops: no sum of one
        pairwise_sum(pointers[1:3], workers[1:3], PRECISION)


def test_owner_refuses_a_used_nonce_a_redo_over_the_same_owners_and_unknown_sessions(make_workers):
    workers = make_workers(3)
    pointer = torch.ones(3).send(workers[0])
    session = session_for(workers)
    owners = [w.id for w in workers]

    def ask(round_, attempt, among=owners, session_id=session.id):
        return command(workers[0], "pairwise_masked_vector", pointer.child.id_at_location, session_id, round_,
                       attempt, list(among), PRECISION)

    assert ask(1, 0)[0] == "masked"
    for round_, attempt, among, message in [(1, 0, owners, "never used twice"), (0, 5, owners, "never used twice"),
                                            (1, 1, owners, "must be among fewer"),
                                            (2, 0, ["w0", "w9"], "no key shared with")]:
        with pytest.raises(AggregationError, match=message):
            ask(round_, attempt, among)
    assert ask(1, 1, owners[:2])[0] == "masked"  # a redo among fewer owners is fine
    with pytest.raises(AggregationError, match="no connection to a peer owner 'me'"):  # the model owner
        command(workers[0], "pairwise_agree_keys", "another-session", ["w0", "me"])
    with pytest.raises(AggregationError, match="unknown session"):
        ask(3, 0, session_id=session.id + "x")


@pytest.mark.parametrize("bad, message", [(float("nan"), "'jane' holds non-finite"),
                                          (float("inf"), "'jane' holds non-finite"),
                                          (4.0e15, "'jane' holds parameters of magnitude >= 3.07e\\+15")])
def test_unencodable_parameters_are_refused_naming_the_worker(workers, bad, message):
    with pytest.raises(AggregationError, match=message) as err:
        pairwise_average(remote_vectors([[0.0, 1.0], [0.0, 1.0], [bad, 1.0]], workers), workers, PRECISION)
    assert err.value.worker == "jane"


def test_aggregation_setting_is_checked_and_reaches_the_cli(capsys):
    import json

    from fl_smpc.cli import main

    with pytest.raises(ConfigError, match="aggregation: must be one of additive, pairwise"):
        FLConfig(aggregation="shamir")
    assert main(["--json", "--seed", "0", "--rounds", "1", "--aggregation", "pairwise"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["aggregation"] == "pairwise"


def test_encoding_rounds_half_away_from_zero_exactly():
    from decimal import ROUND_HALF_UP, Decimal

    generator = np.random.RandomState(0)
    values = np.concatenate([generator.randn(2000).astype(np.float32) * scale for scale in (1e-4, 1, 1e4, 1e8)]
                            + [np.float32([0.0005, -0.0005, 0.0015, -0.0025, 2.5, -2.5, 0.0, -0.0])])
    for precision in (0, 3, 6):
        expected = [int((Decimal(float(x)) * 10 ** precision).to_integral_value(ROUND_HALF_UP)) for x in values]
        assert encode(values, precision).tolist() == expected
