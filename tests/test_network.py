"""Network mode: real `fl-smpc worker` processes on loopback ports, every connection mutual TLS.

Each owner trains with its own code; the model owner sends parameters and settings and receives only
contributions. Worker processes are started by fixtures / ``with`` blocks that always stop them. The
references: the in-process run of the same owner code (``training="owner"``), the tutorial's pointer loop,
and plain-PyTorch FedAvg (``fl_smpc.reference``).
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from fl_smpc import FLConfig, RunSpec, run
from fl_smpc.config import ConfigError
from fl_smpc.data import split_dataset, toy_dataset
from fl_smpc.errors import RoundFailed, WorkerSetupError, WorkerUnreachable
from fl_smpc.federated import train_federated
from fl_smpc.history_io import load_checkpoint, save_checkpoint
from fl_smpc.model_owner.connect import train_with_owners
from fl_smpc.network.csvdata import split_to_csv
from fl_smpc.network.launcher import local_workers, start_worker, wait_ready
from fl_smpc.network.links import WebsocketLink
from fl_smpc.network.tls import create_federation
from reference import fedavg_rounds, local_train, seed_model

CONFIG = FLConfig(seed=0, training="owner")
TOLERANCE = 10**-CONFIG.precision_fractional  # one fixed-precision quantum
PEER_TIMEOUT = 3.0  # workers' peer timeout: short, so a dead peer is named quickly
REPLY_TIMEOUT = 20.0
AGGREGATIONS = ["additive", "pairwise"]


def assert_same_model(state, reference, atol=TOLERANCE):
    for name, value in reference.items():
        assert torch.allclose(state[name], value, atol=atol, rtol=0), (name, state[name], value)


def assert_all_stopped(processes):
    for proc in processes:
        assert proc.poll() is not None, f"worker pid {proc.pid} still running"
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)  # nothing left in its process group either


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """One federation for the module: the model owner and the three owners."""
    directory = str(tmp_path_factory.mktemp("certs"))
    create_federation(directory, ["model", *CONFIG.workers], days=1)
    return directory


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, certs):
    paths = split_to_csv(str(tmp_path_factory.mktemp("data")), CONFIG.workers)
    with local_workers(paths, timeout=PEER_TIMEOUT, certs=certs) as addresses:
        yield addresses
    assert_all_stopped(addresses.processes.values())


@pytest.fixture(scope="module")
def network_runs(cluster, certs):
    """One 5-round run per aggregation over TLS, recording every reply the model owner receives."""
    runs = {}
    for aggregation in AGGREGATIONS:
        received = []
        forward = WebsocketLink.request

        def recording(link, message, received=received, forward=forward):
            reply = forward(link, message)
            received.append(reply)
            return reply

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(WebsocketLink, "request", recording)
            config = FLConfig(seed=0, training="owner", aggregation=aggregation)
            runs[aggregation] = (train_with_owners(config, cluster, timeout=REPLY_TIMEOUT, certs=certs), received)
    return runs


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_tls_run_equals_the_in_process_owner_run_round_by_round(network_runs, aggregation):
    history, _ = network_runs[aggregation]
    in_process = train_federated(FLConfig(seed=0, training="owner", aggregation=aggregation))
    assert [r.round for r in history.rounds] == [1, 2, 3, 4, 5]
    assert_same_model(history.initial_model, in_process.initial_model, atol=0)
    assert history.initial_loss == in_process.initial_loss
    for net, ref in zip(history.rounds, in_process.rounds):
        assert_same_model(net.model, ref.model, atol=0)  # the same owner code: bit for bit
        assert (net.global_loss, net.local_loss) == (ref.global_loss, ref.local_loss)
        assert net.contributors == list(CONFIG.workers) and net.dropped == {}


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_tls_run_is_within_a_quantum_of_plaintext_fedavg(network_runs, aggregation):
    history, _ = network_runs[aggregation]
    reference = fedavg_rounds(seed_model(0), split_dataset(*toy_dataset(), 3), 5, CONFIG.lr, CONFIG.local_steps)
    for net, ref in zip(history.rounds, reference):
        flat = torch.cat([t.flatten() for t in net.model.values()])
        assert (flat - ref.params).abs().max().item() <= TOLERANCE
        assert net.global_loss == pytest.approx(ref.global_loss, abs=3 * TOLERANCE)  # a sum of 3 encoded losses


def local_models_and_data(history):
    """Every owner's locally trained parameters in every round, recomputed in plain torch, and its rows."""
    parts = split_dataset(*toy_dataset(), 3)
    secrets = [t.reshape(-1).double() for x, y in parts for t in (x, y)]
    for start in [history.initial_model] + [r.model for r in history.rounds[:-1]]:
        for x, y in parts:
            model = seed_model(0)
            model.load_state_dict(start)
            local_train(model, x, y, CONFIG.lr, CONFIG.local_steps)
            flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
            secrets += [flat, flat * len(x), (flat * len(x) * 10**CONFIG.precision_fractional).round()]
    return secrets


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_the_model_owner_receives_no_individual_model_loss_or_data(network_runs, aggregation):
    history, replies = network_runs[aggregation]
    kinds = {reply.kind for reply in replies}
    if aggregation == "pairwise":  # double masking: prepared, masked, views sent, unmasking shares
        assert kinds == {"welcome", "ready", "masked", "ok", "unmask_answer"}
    else:
        assert kinds == {"welcome", "shared", "sum_share"}
    arrays = [a for reply in replies for a in reply.arrays.values() if a.dtype == np.int64]
    assert len(arrays) >= 2 * 5 * 3  # one vector per owner, train + evaluate, 5 rounds
    keys = [a for reply in replies for a in reply.arrays.values() if a.dtype != np.int64]
    assert all(a.dtype == np.uint8 and a.shape == (32,) for a in keys)  # the rounds' X25519 public keys
    # the inspection works: the released arrays sum to the decoded aggregate
    secrets = local_models_and_data(history)
    for array in arrays:
        values = torch.from_numpy(array.astype(np.float64))
        for secret in secrets:
            n = min(values.numel(), secret.numel())
            assert not torch.allclose(values[:n], secret[:n], atol=1e-3 * abs(float(secret[:n].abs().max())) + 1e-6)
    for reply in replies:  # fields are the protocol's public ones only
        assert set(reply.fields) <= {
            "owner",
            "task",
            "fingerprint",
            "parameters",
            "features",
            "metrics",
            "min_owners",
            "unreached",
            "answers",
        }


def test_killed_worker_is_named_and_resume_matches_uninterrupted(tmp_path, network_runs, certs):
    uninterrupted, _ = network_runs["additive"]
    paths = split_to_csv(str(tmp_path / "data"), CONFIG.workers)
    checkpoint = str(tmp_path / "run.json")
    with local_workers(paths, timeout=PEER_TIMEOUT, log_dir=str(tmp_path), certs=certs) as addresses:
        alice = addresses.processes["alice"]

        def checkpoint_then_kill_alice(result, history):
            save_checkpoint(checkpoint, history)
            if result.round == 2:
                os.killpg(alice.pid, signal.SIGKILL)
                alice.wait()

        with pytest.raises(RoundFailed) as failed:
            train_with_owners(
                CONFIG, addresses, on_round=checkpoint_then_kill_alice, timeout=REPLY_TIMEOUT, certs=certs
            )
        assert (failed.value.worker, failed.value.round) == ("alice", 3)
        assert "round 3" in str(failed.value) and "alice" in str(failed.value)
        saved = load_checkpoint(checkpoint)
        assert len(saved.rounds) == 2
        assert_same_model(saved.rounds[-1].model, uninterrupted.rounds[1].model, atol=0)

        peers = {n: a for n, a in addresses.items() if n != "alice"}
        log = str(tmp_path / "alice-restarted.log")
        addresses.processes["alice"] = start_worker(
            "alice", paths["alice"], addresses["alice"], peers, log, PEER_TIMEOUT, certs
        )
        wait_ready(addresses.processes["alice"], log, "alice", deadline=float("inf"))
        resumed = train_with_owners(saved.config, addresses, history=saved, timeout=REPLY_TIMEOUT, certs=certs)
    assert [r.round for r in resumed.rounds] == [1, 2, 3, 4, 5]
    assert_same_model(resumed.rounds[-1].model, uninterrupted.rounds[-1].model, atol=0)
    assert_all_stopped([alice, *addresses.processes.values()])


def test_a_worker_given_under_another_name_is_refused(cluster, certs):
    """TLS refuses a server whose certificate is not the name we dial."""
    addresses = {"bobby": cluster["bob"], "alice": cluster["alice"]}
    config = FLConfig(workers=("bobby", "alice"), seed=0, min_owners=2, training="owner")
    with pytest.raises(WorkerUnreachable, match="certificate is not valid for 'bobby'"):
        train_with_owners(config, addresses, timeout=REPLY_TIMEOUT, certs=certs)


def test_workers_of_another_task_are_refused_in_one_line(cluster, certs):
    with pytest.raises(WorkerSetupError, match="trains task 'toy'.*--task"):
        train_with_owners(CONFIG, cluster, task="mlp-classification", timeout=REPLY_TIMEOUT, certs=certs)


def test_the_tutorial_loop_is_refused_over_the_network(cluster, certs):
    with pytest.raises(ConfigError, match="owner trains with its own code"):
        RunSpec(FLConfig(seed=0), transport="websocket", addresses=dict(cluster), certs=certs)


def test_demo_network_command_runs_owner_side_training_over_tls_and_stops_its_workers(capsys, monkeypatch):
    import psutil

    import fl_smpc.network.launcher
    from fl_smpc.cli import main

    commands, command = [], fl_smpc.network.launcher.worker_command

    def recording(*args):
        commands.append(command(*args))
        return commands[-1]

    monkeypatch.setattr(fl_smpc.network.launcher, "worker_command", recording)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert main(["demo-network", "--rounds", "2", "--seed", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["round"] for r in out["rounds"]] == [1, 2] and out["config"]["workers"] == list(CONFIG.workers)
    assert out["config"]["training"] == "owner"
    left = [p.cmdline() for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert left == []
    assert len(commands) == 3 and all("--certs" in c and "--insecure" not in c for c in commands), commands


BAD_FILES = {
    "not text": (b"\xff\xfe\x00x0,label\n", "cannot read"),
    "non-numeric": ("x0,x1,label\n1,abc,1\n", "line 2, column 2: non-numeric"),
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
    argv = [
        "worker",
        "--id",
        "bob",
        "--data",
        str(path),
        "--port",
        "0",
        "--insecure",
        "--peers",
        "alice=127.0.0.1:1,jane=127.0.0.1:2",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err, err


def test_worker_process_refuses_missing_data_file(tmp_path):
    missing = str(tmp_path / "nope.csv")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fl_smpc",
            "worker",
            "--id",
            "bob",
            "--data",
            missing,
            "--insecure",
            "--peers",
            "alice=127.0.0.1:1,jane=127.0.0.1:2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"{missing}: data file not found" in done.stderr


@pytest.mark.parametrize("aggregation", ["pairwise"])
def test_lost_owner_is_dropped_and_rejoins_after_restart(tmp_path, aggregation):
    """Four worker processes; jane is SIGKILLed after round 2 and restarted after round 4.

    Pairwise only (20 s a run): the rejoin (reconnect, a new run on every owner) is the same code for both
    protocols, and an additive worker killed mid-run is test_killed_worker_is_named_and_resume_matches_uninterrupted.

    Rounds 3 and 4 go on over bob, alice and dave (min_owners 3) and name jane as dropped; before
    round 5 the model owner reconnects, every owner starts a new run, and she contributes again.
    """
    config = FLConfig(
        workers=("bob", "alice", "jane", "dave"), rounds=6, seed=0, aggregation=aggregation, training="owner"
    )
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
                addresses.processes["jane"] = start_worker(
                    "jane", paths["jane"], addresses["jane"], peers, log, PEER_TIMEOUT, certs=certs
                )
                wait_ready(addresses.processes["jane"], log, "jane", deadline=float("inf"))

        history = train_with_owners(config, addresses, on_round=kill_then_restart, timeout=REPLY_TIMEOUT, certs=certs)
    everyone = ["bob", "alice", "jane", "dave"]
    assert [r.contributors for r in history.rounds] == [
        everyone,
        everyone,
        ["bob", "alice", "dave"],
        ["bob", "alice", "dave"],
        everyone,
        everyone,
    ]
    assert list(history.rounds[2].dropped) == ["jane"] and "(during train)" in history.rounds[2].dropped["jane"]
    # before round 4 the model owner tried jane again and restarted the run without her
    assert history.rounds[3].dropped == {"jane": "not reachable when the run (re)started"}
    in_process = train_federated(config)
    for net, ref in zip(history.rounds[:2], in_process.rounds):
        assert_same_model(net.model, ref.model, atol=0)
    assert history.rounds[-1].global_loss < history.initial_loss
    assert_all_stopped([first_jane, *addresses.processes.values()])


def test_run_from_a_runspec_over_tls(cluster, certs):
    result = run(RunSpec(CONFIG, transport="websocket", addresses=dict(cluster), certs=certs, timeout=REPLY_TIMEOUT))
    assert [r.round for r in result.history.rounds] == [1, 2, 3, 4, 5]
    assert result.to_dict()["rounds"][-1]["local_loss"] > 0


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_an_mlp_on_regression_targets_with_mini_batches_and_owners_per_round(tmp_path, aggregation):
    """What the tutorial loop refused over the network: an nn.Sequential with a ReLU, a mean loss, float
    targets, mini-batches and a subset of owners per round -- over TLS equal to the same run in-process."""
    from fl_smpc.data_owner.task import load_task
    from fl_smpc.model_owner.connect import train_parts_in_process
    from fl_smpc.network.csvdata import write_csv

    generator = torch.Generator().manual_seed(1)
    names = ("bob", "alice", "jane", "dave")
    x = torch.randn(40, 5, generator=generator)
    y = x @ torch.linspace(-1, 1, 5).view(5, 1) + 0.1 * torch.randn(40, 1, generator=generator)
    parts = split_dataset(x, y, 4, binary_labels=False)
    paths = {}
    for name, (px, py) in zip(names, parts):
        paths[name] = str(tmp_path / f"{name}.csv")
        write_csv(paths[name], px, py, binary_labels=False)
    config = FLConfig(workers=names, rounds=4, local_steps=3, lr=0.05, batch_size=4, owners_per_round=3, seed=0,
                      aggregation=aggregation, training="owner", loss_reduction="mean")
    certs = str(tmp_path / "certs")
    create_federation(certs, ["model", *names], days=1)
    with local_workers(paths, timeout=PEER_TIMEOUT, certs=certs, worker_args=("--task", "mlp-regression")) as addresses:
        network = train_with_owners(config, addresses, task="mlp-regression", timeout=REPLY_TIMEOUT, certs=certs)
    local = train_parts_in_process(config, parts, load_task("mlp-regression"))
    assert [len(r.contributors) for r in network.rounds] == [3, 3, 3, 3]
    for net, ref in zip(network.rounds, local.rounds):
        assert net.contributors == ref.contributors
        assert_same_model(net.model, ref.model, atol=0)
    assert network.rounds[-1].global_loss < network.initial_loss
