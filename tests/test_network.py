"""Network mode: real `fl-smpc worker` processes on loopback ports, every connection mutual TLS.

Worker processes are started by fixtures / ``with`` blocks that always stop them. The reference
for every comparison is the in-process VirtualWorker run with the same seed, plus plain-torch
local training for the message inspection.
"""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

from fl_smpc import FLConfig
from fl_smpc.history_io import load_checkpoint, save_checkpoint
from fl_smpc.network.csvdata import split_to_csv
from fl_smpc.data import split_dataset, toy_dataset
from fl_smpc.federated import RoundFailed, train_federated
from fl_smpc.network.launcher import local_workers, start_worker, wait_ready
from fl_smpc.network.client import (GC_DELAY, NetworkClient, WorkerSetupError, WorkerUnreachable, find_data,
                                    network_workers, train_network)
from fl_smpc.network.tls import client_context, create_federation
from fl_smpc.errors import OwnerFailed
from fl_smpc.secure_aggregation import flatten_on_worker, secure_sum
from fl_smpc.training import sum_squared_error
from fl_smpc.workers import virtual_workers
from helpers import received_tensors
from reference import local_train

CONFIG = FLConfig(seed=0)
TOLERANCE = 10 ** -CONFIG.precision_fractional  # one fixed-precision quantum
PEER_TIMEOUT = 3.0  # workers' peer connect/reply timeout: short, so the dead-peer check is quick
REPLY_TIMEOUT = 20.0


def assert_same_model(state, reference):
    for name, value in reference.items():
        assert torch.allclose(state[name], value, atol=TOLERANCE, rtol=0), (name, state[name], value)


def assert_all_stopped(processes):
    for proc in processes:
        assert proc.poll() is not None, f"worker pid {proc.pid} still running"
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)  # nothing left in its process group either


@pytest.fixture(scope="module")
def in_process():
    return train_federated(CONFIG)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """One federation for the module: the model owner and the three owners."""
    directory = str(tmp_path_factory.mktemp("certs"))
    create_federation(directory, ["model", *CONFIG.workers], days=1)
    return directory


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, certs):
    paths = split_to_csv(str(tmp_path_factory.mktemp("data")), CONFIG.workers)
    # objects_count is a worker command, refused unless the owner allows it: the leftover checks need it
    with local_workers(paths, timeout=PEER_TIMEOUT, certs=certs,
                       worker_args=("--allow-command", "objects_count")) as addresses:
        yield addresses
    assert_all_stopped(addresses.processes.values())


@pytest.fixture(scope="module")
def network_run(cluster, certs):
    """One 5-round websocket run, recording every reply the model owner receives."""
    received = []
    forward = NetworkClient._forward_to_websocket_server_worker

    def recording(client, message):
        reply = forward(client, message)
        received.append(reply)
        return reply

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(NetworkClient, "_forward_to_websocket_server_worker", recording)
        history = train_network(CONFIG, cluster, timeout=REPLY_TIMEOUT, certs=certs)
    return history, received


def test_websocket_run_matches_in_process_run(network_run, in_process):
    history, _ = network_run
    assert [r.round for r in history.rounds] == [1, 2, 3, 4, 5]
    assert_same_model(history.initial_model, in_process.initial_model)
    for net, ref in zip(history.rounds, in_process.rounds):
        assert_same_model(net.model, ref.model)
        assert net.worker_losses == pytest.approx(ref.worker_losses, abs=1e-5)
    losses = [history.initial_loss] + [r.global_loss for r in history.rounds]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def plain_local_models(history, config):
    """Each owner's locally trained parameters in every round, recomputed in plain torch."""
    data, target = toy_dataset()
    parts = split_dataset(data, target, len(config.workers))
    starts = [history.initial_model] + [r.model for r in history.rounds[:-1]]
    models = []
    for start in starts:
        for x, y in parts:
            model = nn.Linear(3, 1)
            model.load_state_dict(start)
            local_train(model, x, y, config.lr, config.local_steps)
            models.append([p.detach().clone() for p in model.parameters()])
    return parts, models


def test_model_owner_receives_no_raw_data_and_no_individual_model(network_run):
    history, replies = network_run
    tensors = received_tensors(replies)
    tensors = [t for t in tensors if t.numel() > 0]  # syft wraps every pointer in an empty tensor
    floats = [t for t in tensors if t.is_floating_point()]
    shares = [t for t in tensors if t.dtype == torch.int64]
    # the inspection itself works: per round we see losses and one share of the sum per owner
    assert len(floats) >= CONFIG.rounds * len(CONFIG.workers) and len(shares) >= CONFIG.rounds * len(CONFIG.workers)
    assert all(t.numel() == 1 for t in floats), [t.shape for t in floats if t.numel() > 1]

    parts, models = plain_local_models(history, CONFIG)
    scale = 10 ** CONFIG.precision_fractional
    secrets = [t for x, y in parts for t in (x, y)]
    for params in models:
        flat = torch.cat([p.view(-1) for p in params])
        secrets += params + [flat, (flat * scale).round().long()]
    for tensor in tensors:
        for secret in secrets:
            if tensor.numel() == secret.numel():
                assert not torch.allclose(tensor.double().view(-1), secret.double().view(-1), atol=1e-6), secret


def test_killed_worker_is_named_and_resume_matches_uninterrupted(tmp_path, network_run, certs):
    uninterrupted, _ = network_run
    paths = split_to_csv(str(tmp_path / "data"), CONFIG.workers)
    checkpoint = str(tmp_path / "run.json")
    with local_workers(paths, timeout=PEER_TIMEOUT, log_dir=str(tmp_path), certs=certs) as addresses:
        alice = addresses.processes["alice"]
        armed = []

        def checkpoint_and_arm(result, history):
            save_checkpoint(checkpoint, history)
            armed.append(result.round == 2)

        def loss_killing_alice_in_round_3(prediction, target):
            # called by the model owner to build each remote step: kill alice during her round-3 training
            if armed[-1:] == [True] and target.location.id == "alice":
                os.killpg(alice.pid, signal.SIGKILL)
                alice.wait()
                armed.append(False)
            return sum_squared_error(prediction, target)

        torch.manual_seed(CONFIG.seed)
        model = nn.Linear(3, 1)
        with pytest.raises(RoundFailed) as failed:
            train_network(CONFIG, addresses, model=model, loss_fn=loss_killing_alice_in_round_3,
                          on_round=checkpoint_and_arm, timeout=REPLY_TIMEOUT, certs=certs)
        assert (failed.value.worker, failed.value.round) == ("alice", 3)
        assert "round 3" in str(failed.value) and "'alice'" in str(failed.value)
        assert_same_model(model.state_dict(), uninterrupted.rounds[1].model)  # kept the last completed round
        saved = load_checkpoint(checkpoint)
        assert len(saved.rounds) == 2
        assert_same_model(saved.rounds[-1].model, uninterrupted.rounds[1].model)

        # a worker that cannot reach a dead peer reports the *peer*, within its peer timeout
        # (sharing as the protocol does: the owners' policy refuses syft's remote fix_prec command)
        with network_workers({"bob": addresses["bob"]}, timeout=REPLY_TIMEOUT, certs=certs) as (bob,):
            with pytest.raises(OwnerFailed) as unreachable:
                secure_sum([flatten_on_worker(nn.Linear(1, 1).send(bob))], ["bob", "alice"])
        assert unreachable.value.worker == "alice" and "reported by 'bob'" in str(unreachable.value)

        peers = {n: a for n, a in addresses.items() if n != "alice"}
        log = str(tmp_path / "alice-restarted.log")
        addresses.processes["alice"] = start_worker("alice", paths["alice"], addresses["alice"], peers, log,
                                                    PEER_TIMEOUT, certs)
        wait_ready(addresses.processes["alice"], log, "alice", deadline=float("inf"))
        resumed = train_network(saved.config, addresses, history=saved, timeout=REPLY_TIMEOUT, certs=certs)
    assert [r.round for r in resumed.rounds] == [1, 2, 3, 4, 5]
    assert_same_model(resumed.rounds[-1].model, uninterrupted.rounds[-1].model)
    assert_all_stopped([alice, *addresses.processes.values()])


def test_run_leaves_only_the_data_on_the_workers(cluster, network_run, certs):
    # every remote model, share and intermediate was deleted (the model owner batches the deletes)
    with network_workers(cluster, timeout=REPLY_TIMEOUT, certs=certs) as clients:
        assert [c.objects_count_remote() for c in clients] == [2, 2, 2]


def test_a_stale_pointer_of_the_same_name_does_not_take_the_batch_of_deletes(cluster, certs):
    """A pointer to an older worker named "bob" (here an in-process one), freed during a network run
    after the batching delay, used to carry the live bob's batch of deletes to the old bob."""
    import time

    with virtual_workers(["bob"]) as (old_bob,):  # e.g. an in-process run earlier in the same session
        stale = torch.zeros(1).send(old_bob)
    with network_workers(cluster, timeout=REPLY_TIMEOUT, certs=certs) as clients:
        fresh = torch.ones(3).send(clients[0])
        del fresh  # batched: its delete waits for the next flush
        time.sleep(GC_DELAY + 0.1)
        del stale  # past the delay: this delete flushes "bob"'s batch
    with network_workers(cluster, timeout=REPLY_TIMEOUT, certs=certs) as clients:
        assert clients[0].objects_count_remote() == 2


def test_worker_refuses_to_hand_out_its_data(cluster, certs):
    from syft.exceptions import GetNotPermittedError

    with network_workers({"bob": cluster["bob"]}, timeout=REPLY_TIMEOUT, certs=certs) as (bob,):
        data_ptr, target_ptr = find_data(bob)
        for ptr in (data_ptr, target_ptr):
            with pytest.raises(GetNotPermittedError):
                ptr.get()
        assert find_data(bob)[0].shape == (2, 3)  # still there


def test_worker_given_under_another_name_is_refused(cluster, certs, monkeypatch):
    """TLS refuses a server whose certificate is not the name we dial; without that check, syft's ids still do."""
    import fl_smpc.network.client

    addresses = {"bobby": cluster["bob"], "alice": cluster["alice"]}
    with pytest.raises(WorkerUnreachable, match="certificate is not valid for 'bobby'"):
        train_network(FLConfig(workers=("bobby", "alice"), seed=0, min_owners=2), addresses, timeout=REPLY_TIMEOUT,
                      certs=certs)
    unchecked = client_context(certs, "model")
    unchecked.check_hostname = False  # TLS that does not check whom it reached: only syft's id check is left
    monkeypatch.setattr(fl_smpc.network.client, "wrap_client", lambda context, sock, expected: unchecked.wrap_socket(
        sock))
    with pytest.raises(WorkerSetupError, match="has id 'bob', but it was given as 'bobby'"):
        train_network(FLConfig(workers=("bobby", "alice"), seed=0, min_owners=2), addresses, timeout=REPLY_TIMEOUT,
                      certs=certs)


def test_demo_network_command_runs_over_tls_and_stops_its_workers(capsys, monkeypatch):
    import fl_smpc.network.launcher
    from fl_smpc.cli import main

    import psutil

    commands, command = [], fl_smpc.network.launcher.worker_command

    def recording(*args):
        commands.append(command(*args))
        return commands[-1]

    monkeypatch.setattr(fl_smpc.network.launcher, "worker_command", recording)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert main(["demo-network", "--rounds", "2", "--seed", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["round"] for r in out["rounds"]] == [1, 2] and out["config"]["workers"] == list(CONFIG.workers)
    left = [p.cmdline() for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert left == []
    assert len(commands) == 3 and all("--certs" in c and "--insecure" not in c for c in commands), commands


BAD_FILES = {
    "not text": (b"\xff\xfe\x00x0,label\n", "cannot read"),
    "non-numeric": ("x0,x1,label\n1,abc,1\n", "line 2: non-numeric"),
    "column count": ("x0,x1,label\n1,0,1\n1,1\n", "line 3: expected 3 columns"),
    "label": ("x0,x1,label\n1,0,1\n0,1,2\n", "line 3: label (last column) must be 0 or 1"),
    "no rows": ("x0,x1,label\n", "no data rows"),
    "no header": ("1,0,1\n0,1,0\n", "line 1 looks like data, not a header"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_worker_refuses_bad_data_file(case, tmp_path, capsys):
    from fl_smpc.cli import main

    text, message = BAD_FILES[case]
    path = tmp_path / "bob.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["worker", "--id", "bob", "--data", str(path), "--port", "0", "--insecure"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err, err


def test_worker_process_refuses_missing_data_file(tmp_path):
    missing = str(tmp_path / "nope.csv")
    done = subprocess.run([sys.executable, "-m", "fl_smpc", "worker", "--id", "bob", "--data", missing, "--insecure"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"{missing}: data file not found" in done.stderr


@pytest.mark.parametrize("aggregation", ["additive", "pairwise"])
def test_lost_owner_is_dropped_and_rejoins_after_restart(tmp_path, aggregation):
    """Four worker processes; jane is SIGKILLed after round 2 and restarted after round 4.

    Rounds 3 and 4 go on over bob, alice and dave (min_owners 3) and name jane as dropped; before
    round 5 the model owner reconnects, finds jane's data by tag, and she contributes again.
    """
    config = FLConfig(workers=("bob", "alice", "jane", "dave"), rounds=6, seed=0, aggregation=aggregation)
    paths = split_to_csv(str(tmp_path / "data"), config.workers)
    certs = str(tmp_path / "certs")
    create_federation(certs, ["model", *config.workers], days=1)
    with local_workers(paths, timeout=PEER_TIMEOUT, log_dir=str(tmp_path), certs=certs) as addresses:
        first_jane = addresses.processes["jane"]

        def kill_then_restart(result, _history):
            if result.round == 2:
                os.killpg(first_jane.pid, signal.SIGKILL)
                first_jane.wait()
            if result.round == 4:
                peers = {n: a for n, a in addresses.items() if n != "jane"}
                log = str(tmp_path / "jane-restarted.log")
                addresses.processes["jane"] = start_worker("jane", paths["jane"], addresses["jane"], peers, log,
                                                           PEER_TIMEOUT, certs=certs)
                wait_ready(addresses.processes["jane"], log, "jane", deadline=float("inf"))

        history = train_network(config, addresses, on_round=kill_then_restart, timeout=REPLY_TIMEOUT, certs=certs)
    everyone = ["bob", "alice", "jane", "dave"]
    assert [r.contributors for r in history.rounds] == [everyone, everyone, ["bob", "alice", "dave"],
                                                        ["bob", "alice", "dave"], everyone, everyone]
    for r in history.rounds[2:4]:
        assert list(r.dropped) == ["jane"] and "jane" in r.dropped["jane"] and "(during training)" in r.dropped["jane"]
    in_process = train_federated(config)
    for net, ref in zip(history.rounds[:2], in_process.rounds):
        assert_same_model(net.model, ref.model)
    assert history.rounds[-1].global_loss < history.initial_loss
    assert_all_stopped([first_jane, *addresses.processes.values()])
