"""The data owners' release policy (fl_smpc/network/policy.py) against real worker processes on loopback.

Every route by which a client could take, copy, change or delete an owner's data runs twice:
against `fl-smpc worker` processes, which must refuse it, and against syft's original behaviour
(the same DataOwnerServer without the policy, in this process, one fresh set of owners per route
because the routes damage what they attack), where it must work: each check can fail.

The workers' data cannot be fetched to compare, so integrity is checked two honest ways: after
every route, a probe (the protocol's loss of a fixed model on bob's data and labels: one allowed
scalar, compared with plain torch on bob's CSV file), and at the end each worker's logged SHA-256
of its data at start and at stop, compared with the hash of its CSV file.
"""
import json
import os
import pickle
import re
import select
import subprocess
import sys
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import syft as sy
import torch
from syft.exceptions import GetNotPermittedError
from syft.messaging.message import ForceObjectDeleteMessage, ObjectMessage
from syft.serde.msgpack import serde as msgpack_serde
from torch import nn

from fl_smpc import FLConfig
from fl_smpc.cli import main
from fl_smpc.federated import train_federated
from fl_smpc.network import DATA_TAG, TARGET_TAG
from fl_smpc.network.client import network_workers, train_network
from fl_smpc.network.csvdata import read_csv, split_to_csv
from fl_smpc.network.launcher import local_workers
from fl_smpc.network.server import data_owner_server, fingerprint
from fl_smpc.network.tls import create_federation
from fl_smpc.training import remote_loss, sum_squared_error
from fl_smpc.workers import create_hook, introduce, remove_workers

CONFIG = FLConfig(seed=0)
TOLERANCE = 10 ** -CONFIG.precision_fractional  # one fixed-precision quantum
SCALE = 10 ** CONFIG.precision_fractional
PEER_TIMEOUT = 3.0
REPLY_TIMEOUT = 20.0
ROGUE = os.path.join(os.path.dirname(__file__), "rogue_client.py")
ROGUE_PAUSE = 0.2  # seconds between the rogue's rounds of attacks (24 requests): it attacks all through the run


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    return split_to_csv(str(tmp_path_factory.mktemp("data")), CONFIG.workers)


@pytest.fixture(scope="module")
def owners(data_files):
    """Each owner's (data, labels), read by the test from its CSV file."""
    return {name: read_csv(path) for name, path in data_files.items()}


def logged_hashes(log: str):
    """The data hash a worker logged at start, and whether it found its data unchanged at stop."""
    start = re.search(r"\(sha256 ([0-9a-f]{64})\)", log)
    stop = re.search(r"stopped; data (unchanged|CHANGED)", log)
    return (start and start.group(1)), (stop and stop.group(1))


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """The federation: the model owner and the three owners. Every attack below holds the model owner's
    own, valid certificate: TLS lets it in, and only the owners' release policy stands in its way."""
    directory = str(tmp_path_factory.mktemp("certs"))
    create_federation(directory, ["model", *CONFIG.workers], days=1)
    return directory


@pytest.fixture(scope="module")
def guarded(data_files, owners, certs, tmp_path_factory):
    """Three workers with the policy, over mutual TLS; afterwards each must have logged its CSV's hash and
    unchanged data."""
    logs = str(tmp_path_factory.mktemp("logs"))
    with local_workers(data_files, timeout=PEER_TIMEOUT, log_dir=logs, certs=certs) as addresses:
        addresses.certs = certs
        yield addresses
    for name, path in addresses.logs.items():
        with open(path) as f:
            log = f.read()
        assert logged_hashes(log) == (fingerprint(*owners[name]), "unchanged"), log[-3000:]


@contextmanager
def connected(addresses):
    """A fresh model-owner connection to every worker (a new session with its own round budget)."""
    with network_workers(addresses, timeout=REPLY_TIMEOUT, certs=addresses.certs) as clients:
        yield SimpleNamespace(**{c.id: c for c in clients})


@contextmanager
def unguarded(data_files, policy: bool = False):
    """syft's original behaviour: the owners' DataOwnerServers without the policy, in this process.

    ``policy`` adds it (in-process nobody's identity is known: every message counts as the model owner's).
    """
    hook = create_hook()
    servers = [data_owner_server(hook, name, *read_csv(path), port=0) for name, path in data_files.items()]
    introduce(hook.local_worker, servers)
    for server in servers if policy else ():
        server.enable_policy([s.id for s in servers if s is not server])
    try:
        yield SimpleNamespace(**{s.id: s for s in servers})
    finally:
        remove_workers(hook, servers)
        for server in servers:
            server.loop.close()


def remote_tensors(location):
    """(data, labels) pointers found by tag through syft's search message; None if either is gone."""
    found = [sy.local_worker.request_search([tag], location=location) for tag in (DATA_TAG, TARGET_TAG)]
    return (found[0][0], found[1][0]) if all(len(f) == 1 for f in found) else None


PROBE = {"weight": torch.tensor([[0.5, -1.25, 2.0]]), "bias": torch.tensor([0.75])}


def probe_model():
    model = nn.Linear(3, 1)
    model.load_state_dict(PROBE)
    return model


def probe(location):
    """The protocol's loss of a fixed model on the owner's data and labels (None if they are gone or broken)."""
    try:
        return remote_loss(probe_model().send(location), *remote_tensors(location))
    except Exception:  # e.g. no tensor tagged as data any more, or a pointer to a deleted id
        return None


def expected_probe(data, target):
    return sum_squared_error(probe_model()(data), target).item()


# --- the routes: each returns what the attacker obtained; a refusal raises GetNotPermittedError ---

def encoded(ptr):
    """Fixed-precision encoding through a pointer, as ``fix_prec`` does it in the protocol."""
    return (ptr * SCALE).long().type(torch.int64)


def decoded(shares):
    total = shares[0]
    for share in shares[1:]:
        total = total + share  # int64 wraps: the ring syft shares in
    return total.float() / SCALE


def fetch_shares(c, owners):
    data, _ = remote_tensors(c.bob)
    shared = encoded(torch.cat([data])).share(*owners).get()
    return decoded([shared.child.child[name].get() for name in owners])


def send(c, message):
    return sy.local_worker.send_msg(message, location=c.bob)


def run_command(c, name, target, args=(), return_ids=None, return_value=False):
    return sy.local_worker.send_command(c.bob, name, target.child, args, {}, return_ids, return_value)


def pickle_in_a_tensor(c, marker):
    """An ObjectMessage whose tensor bytes are a pickle that creates the file ``marker`` when loaded."""
    class CreatesFile:
        def __reduce__(self):
            return open, (marker, "w")

    code, ((tensor_code, payload),) = msgpack_serde._simplify(sy.local_worker, ObjectMessage(torch.zeros(1)))
    payload = (payload[0], pickle.dumps(CreatesFile())) + payload[2:]
    message = msgpack_serde._serialize_msgpack_binary((code, ((tensor_code, payload),)))
    try:
        sy.serde.deserialize(c.bob._recv_msg(message))
    except GetNotPermittedError:
        raise
    except Exception:  # syft fails after unpickling: what matters is whether the pickle ran
        pass
    return os.path.exists(marker)


def data_of(c):
    return remote_tensors(c.bob)[0]


def labels_of(c):
    return remote_tensors(c.bob)[1]


def move_to_alice(c):
    moved = data_of(c).move(c.alice)
    return moved.get()


def worker_command(c, name):
    return send(c, sy.local_worker.create_worker_command_message(name))


# name: (route(c, marker), what it yields when it works: "data", "labels", or a check on the result)
LEAKS = {
    "data.get()": (lambda c, m: data_of(c).get(), "refused before too"),
    "labels.get()": (lambda c, m: labels_of(c).get(), "refused before too"),
    "data.clone().get()": (lambda c, m: data_of(c).clone().get(), "refused before too"),
    "data.float().get()": (lambda c, m: data_of(c).float().get(), "refused before too"),
    "(data + 0).get()": (lambda c, m: (data_of(c) + 0).get(), "data"),
    "(data * 1).get()": (lambda c, m: (data_of(c) * 1).get(), "data"),
    "data.copy().get()": (lambda c, m: data_of(c).copy().get(), "data"),
    "data.view(-1).get()": (lambda c, m: data_of(c).view(-1).get().view(-1, 3), "data"),
    "data[0].get()": (lambda c, m: data_of(c)[0].get(), "row 0"),
    "(labels + 0).get()": (lambda c, m: (labels_of(c) + 0).get(), "labels"),
    "torch.cat([data]).get() (a copy by a protocol command)": (lambda c, m: torch.cat([data_of(c)]).get(), "data"),
    "data.fix_prec().share(alice, jane), get both shares": (
        lambda c, m: data_of(c).fix_prec().share("alice", "jane").get().get().float_prec(), "data"),
    "data.move(alice), get it from alice": (lambda c, m: move_to_alice(c), "data"),
    "search([]) lists every object": (lambda c, m: sy.local_worker.request_search([], location=c.bob),
                                      "all objects"),
    "worker command list_objects": (lambda c, m: worker_command(c, "list_objects"), "data as text"),
    "command with return_value=True": (lambda c, m: run_command(c, "__add__", data_of(c), (0,),
                                                                return_value=True), "data"),
    "protocol share() among 3 owners, get every share": (lambda c, m: fetch_shares(c, ["bob", "alice", "jane"]),
                                                        "data"),
    "protocol share() among 2 owners, get both shares": (lambda c, m: fetch_shares(c, ["bob", "alice"]), "data"),
    "5 tainted scalars in one round": (lambda c, m: [torch.cat([data_of(c)]).sum().get() for _ in range(5)],
                                       "5 scalars"),
    "pickle inside a tensor (runs code on the worker)": (pickle_in_a_tensor, "code ran"),
}


def overwrite_by_message(c):
    labels = labels_of(c)
    fake = torch.zeros(2, 1)
    fake.id = labels.child.id_at_location
    send(c, ObjectMessage(fake))


DAMAGE = {
    "data.mul_(0).add_(1)": lambda c: data_of(c).mul_(0).add_(1),
    "delete the data": lambda c: send(c, ForceObjectDeleteMessage([data_of(c).child.id_at_location])),
    "replace the labels: send an object with their id": overwrite_by_message,
    "replace the labels: a command's result id": lambda c: run_command(
        c, "__mul__", data_of(c), (0,), return_ids=(labels_of(c).child.id_at_location,)),
    "data.float() re-registers the data, delete that id": lambda c: send(
        c, ForceObjectDeleteMessage([data_of(c).float().child.id_at_location])),
}


def leaked(expected, result, owners):
    data, labels = owners["bob"]
    checks = {
        "data": lambda r: torch.allclose(r.float(), data, atol=TOLERANCE),
        "labels": lambda r: torch.equal(r, labels),
        "row 0": lambda r: torch.equal(r, data[0]),
        "all objects": lambda r: len(r) >= 2,
        "data as text": lambda r: torch._tensor_str._str(data) in r,  # torch's own printout of the values
        "5 scalars": lambda r: len(r) == 5 and all(abs(s.item() - data.sum().item()) < 1e-5 for s in r),
        "code ran": lambda r: r is True,
    }
    return checks[expected](result)


def log_of(addresses, name):
    with open(addresses.logs[name]) as f:
        return f.read()


@pytest.mark.parametrize("route", list(LEAKS))
def test_a_leak_route_is_refused(route, guarded, tmp_path):
    attack, _ = LEAKS[route]
    marker = str(tmp_path / "code-ran")
    with connected(guarded) as c, pytest.raises(GetNotPermittedError) as refused:
        attack(c, marker)
    assert "refused:" in str(refused.value)
    reason = str(refused.value).split("refused: ", 1)[1]
    assert reason in log_of(guarded, "bob") + log_of(guarded, "alice"), "the worker logs each refusal"
    assert not os.path.exists(marker)  # (the data's integrity: the guarded fixture's hashes at the end)


@pytest.mark.parametrize("route", list(LEAKS))
def test_without_the_policy_the_leak_route_works(route, data_files, owners, tmp_path):
    attack, expected = LEAKS[route]
    with unguarded(data_files) as c:
        if expected == "refused before too":  # syft's refuse_get already stopped these
            with pytest.raises(GetNotPermittedError):
                attack(c, str(tmp_path / "code-ran"))
        else:
            assert leaked(expected, attack(c, str(tmp_path / "code-ran")), owners)


@pytest.mark.parametrize("route", list(DAMAGE))
def test_a_write_or_delete_is_refused_and_the_data_stays(route, guarded, owners):
    with connected(guarded) as c, pytest.raises(GetNotPermittedError):
        DAMAGE[route](c)
    with connected(guarded) as c:
        assert probe(c.bob) == pytest.approx(expected_probe(*owners["bob"]), abs=1e-5)


@pytest.mark.parametrize("route", list(DAMAGE))
def test_without_the_policy_the_write_or_delete_works(route, data_files, owners):
    with unguarded(data_files) as c:
        assert probe(c.bob) == pytest.approx(expected_probe(*owners["bob"]), abs=1e-5)  # intact before
        DAMAGE[route](c)
        after = probe(c.bob)
    assert after is None or after != pytest.approx(expected_probe(*owners["bob"]), abs=1e-5)


def read_line(pipe, deadline: float) -> str:
    while time.monotonic() < deadline:
        if select.select([pipe], [], [], 0.2)[0]:
            return pipe.readline()
    return ""


def test_a_rogue_client_during_a_20_round_run_changes_nothing(guarded, tmp_path):
    config = FLConfig(seed=0, rounds=20)
    stop = tmp_path / "stop"
    workers = ",".join(f"{n}={h}:{p}" for n, (h, p) in guarded.items())
    rogue = subprocess.Popen([sys.executable, ROGUE, workers, str(stop), str(ROGUE_PAUSE), guarded.certs],
                             stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        reference = train_federated(config)  # while the rogue starts
        assert read_line(rogue.stdout, time.monotonic() + 120).strip() == "ready", rogue.stderr.read()[-3000:]
        started = time.time()
        history = train_network(config, guarded, timeout=REPLY_TIMEOUT, certs=guarded.certs)
        ended = time.time()
        stop.touch()
        out, err = rogue.communicate(timeout=60)
    finally:
        if rogue.poll() is None:
            rogue.kill()
            rogue.wait()
    assert rogue.returncode == 0 and out.strip(), err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    outcomes, rounds = report["outcomes"], len(report["finished"])
    assert len([t for t in report["finished"] if started < t < ended]) >= 2, report  # attacks ran during training
    scalars = 3 * min(rounds, 4)  # one connection per owner: 4 tainted scalars each, then its round budget is spent
    assert outcomes == {"read: shape: allowed": 3 * rounds,
                        "read: tainted scalar: allowed": scalars, "read: tainted scalar: refused": 3 * rounds - scalars,
                        **{f"{attack}: refused": 3 * rounds for attack in (
                            "get: data", "get: data + 0", "get: copy of labels", "write: data.mul_(0)",
                            "write: data.add_(1)", "write: delete data")}}, (outcomes, err[-2000:])
    for net, ref in zip(history.rounds, reference.rounds):
        for name, value in ref.model.items():
            assert torch.allclose(net.model[name], value, atol=TOLERANCE, rtol=0), (net.round, name)
    assert len(history.rounds) == 20


def test_min_owners_must_fit_the_federation(data_files, capsys):
    code = main(["worker", "--id", "bob", "--data", data_files["bob"], "--port", "0", "--min-owners", "4", "--insecure",
                 "--peers", "alice=127.0.0.1:1,jane=127.0.0.1:2"])
    assert code == 2
    assert "min-owners: a released sum must cover 2 to 3 owners" in capsys.readouterr().err


@pytest.mark.parametrize("target, participants, reason", [
    ("data", ["bob", "alice", "jane"], "only a plain tensor of this connection"),  # the raw data
    ("own", ["bob", "alice"], "a sum must cover at least 3 owners"),
    ("own", ["bob", "alice", "mallory"], "not all owners of this federation"),
])
def test_pairwise_masked_vector_only_of_the_connection_s_tensor_among_enough_owners(guarded, target, participants,
                                                                                   reason):
    """The pairwise protocol's release: without these checks the owner's own code would mask whatever it is
    pointed at (its raw data too) for whatever owners it is told."""
    with connected(guarded) as c:
        tensor_id = (data_of(c) if target == "data" else torch.ones(3).send(c.bob)).child.id_at_location
        message = sy.local_worker.create_worker_command_message(
            "pairwise_masked_vector", None, tensor_id, "session", 1, 0, participants, 3)
        with pytest.raises(GetNotPermittedError, match=reason):
            send(c, message)
