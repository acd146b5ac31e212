"""Checkpoints, resume in-process, and the network CLI's argument handling (issue 4; no processes)."""
import json
import os

import pytest
import torch

from fl_smpc import FLConfig
from fl_smpc.history_io import CheckpointError, checkpoint_writer, load_checkpoint, save_checkpoint
from fl_smpc.cli import main
from fl_smpc.network.csvdata import read_csv, split_to_csv
from fl_smpc.data import toy_dataset
from fl_smpc.federated import train_federated
from fl_smpc.config import parse_addresses


class Interrupted(Exception):
    pass


def test_checkpoint_round_trips_history_exactly(tmp_path):
    path = str(tmp_path / "run.json")
    history = train_federated(FLConfig(seed=3, rounds=2), on_round=checkpoint_writer(path))
    loaded = load_checkpoint(path)
    assert loaded.config == history.config
    assert loaded.to_dict() == history.to_dict()  # float32 values survive JSON exactly
    assert json.load(open(path))["completed_rounds"] == 2
    assert [f for f in os.listdir(tmp_path) if f != "run.json"] == []  # no temporary file left


def test_interrupted_run_resumed_from_cli_ends_like_uninterrupted(tmp_path, capsys):
    path = str(tmp_path / "run.json")
    config = FLConfig(seed=7)
    uninterrupted = train_federated(config)

    def checkpoint_then_stop(result, history):
        save_checkpoint(path, history)
        if result.round == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_federated(config, on_round=checkpoint_then_stop)
    assert len(load_checkpoint(path).rounds) == 2
    assert main(["--resume", path, "--checkpoint", path, "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3, 4, 5]
    assert resumed["rounds"][-1]["model"] == uninterrupted.to_dict()["rounds"][-1]["model"]
    assert load_checkpoint(path).to_dict() == resumed


@pytest.mark.parametrize("content, message", [
    (None, "cannot read checkpoint"),
    ("{not json", "cannot read checkpoint"),
    ('{"format": "other"}', "not an fl-smpc checkpoint"),
    ('{"format": "fl-smpc-checkpoint/1", "config": {"rounds": 0}}', "malformed checkpoint"),
])
def test_bad_checkpoint_is_reported(tmp_path, capsys, content, message):
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(str(path))
    assert main(["--resume", str(path)]) == 2  # bad input
    assert message in capsys.readouterr().err


def test_checkpoint_into_missing_directory_is_refused_before_training(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "nope" / "run.json")]) == 2  # bad input
    assert "no such directory" in capsys.readouterr().err


def test_parse_addresses():
    assert parse_addresses("bob=127.0.0.1:8777, alice=10.0.0.2:8778") == {
        "bob": ("127.0.0.1", 8777), "alice": ("10.0.0.2", 8778)}
    for bad in ["bob", "bob=127.0.0.1", "bob=host:port", "bob=h:70000", "=h:1", "bob=h:1,bob=h:2", ""]:
        with pytest.raises(ValueError):
            parse_addresses(bad)


@pytest.mark.parametrize("argv, message", [
    (["--workers", "bob=127.0.0.1:1,alice=127.0.0.1:2"], "needs --transport websocket"),
    (["--transport", "websocket", "--workers", "bob,alice"], "expected NAME=HOST:PORT"),
    (["--transport", "websocket", "--workers", "bob=h:1"], "at least 2 workers"),
])
def test_cli_rejects_mismatched_workers_and_transport(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2 and message in capsys.readouterr().err


def test_unreachable_worker_is_named_without_hanging(capsys):
    # nothing listens on port 1: refused at once, retried until the connect timeout (here 1 s)
    argv = ["--transport", "websocket", "--insecure", "--timeout", "1",
            "--workers", "bob=127.0.0.1:1,alice=127.0.0.1:1,jane=127.0.0.1:1"]
    assert main(argv) == 1
    assert "worker 'bob': cannot connect to ws://127.0.0.1:1" in capsys.readouterr().err


def test_split_data_writes_the_in_process_split(tmp_path, capsys):
    assert main(["split-data", "--out", str(tmp_path), "--workers", "bob,alice,jane"]) == 0
    assert "bob: " in capsys.readouterr().out
    data, target = toy_dataset()
    rows = [read_csv(str(tmp_path / f"{n}.csv")) for n in ("bob", "alice", "jane")]
    assert torch.equal(torch.cat([x for x, _ in rows]), data) and torch.equal(torch.cat([y for _, y in rows]), target)
    assert split_to_csv(str(tmp_path / "again"), ["a", "b"]).keys() == {"a", "b"}


@pytest.mark.parametrize("names, message", [("bob,bob,jane", "duplicate worker names ['bob']"),
                                            ("bob,,jane", "1-64 letters")])
def test_split_data_refuses_names_that_would_overwrite_or_escape(tmp_path, capsys, names, message):
    assert main(["split-data", "--out", str(tmp_path), "--workers", names]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_that_cannot_be_written_is_an_error_not_a_traceback(tmp_path, capsys, monkeypatch):
    import fl_smpc.history_io

    def disk_full(path, history):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fl_smpc.history_io, "save_checkpoint", disk_full)
    csv = tmp_path / "h.csv"
    assert main(["--seed", "0", "--checkpoint", str(tmp_path / "run.json"), "--history", str(csv)]) == 1
    assert "cannot write the checkpoint after round 1: [Errno 28] No space left on device" in capsys.readouterr().err
    assert len(csv.read_text().splitlines()) == 1 + 3  # the completed round is still written
