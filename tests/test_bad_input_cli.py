"""Every bad value a user can type or feed ends in a one-line message naming it, never a traceback,
with exit status 2 for flags and files given on the command line and 1 for a run that fails, and
nothing written or half-written."""

import copy
import json
import math

import pytest

from fl_smpc import FLConfig, train_federated
from fl_smpc.cli import main
from fl_smpc.history_io import FORMAT, save_checkpoint


def run_cli(capsys, argv):
    """(exit status, stderr) of ``fl-smpc argv``; argparse's own exit is caught too."""
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def last_line(err: str) -> str:
    lines = err.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.mark.parametrize("argv, message", [
    (["--workers", ",".join(f"w{i}" for i in range(7))], "at most 6 workers"),
    (["--workers", ",".join(f"w{i}" for i in range(50))], "at most 6 workers"),
    (["--timeout", "nan"], "--timeout: must be a finite number, got 'nan'"),
    (["--timeout", "inf"], "--timeout: must be a finite number"),
    (["--timeout", "-1"], "timeout: must be a positive finite number, got -1.0"),
    (["--timeout", "0"], "timeout: must be a positive finite number"),
    (["--lr", "1e308"], "lr: must be at most 3.40282e+38"),
    (["--lr", "nan"], "--lr: must be a finite number"),
    (["--seed", "4294967296"], "seed: must be an integer from 0 to 4294967295"),
    (["--seed", "-1"], "seed: must be an integer from 0 to 4294967295"),
    (["--workers", "../evil,b"], "names must be 1-64 letters"),
    (["--workers", "bob=127.0.0.1:1,alice=127.0.0.1:2"], "NAME=HOST:PORT needs --transport websocket"),
    (["--transport", "websocket", "--workers", "bob=h:70000,alice=h:1"], "port from 1 to 65535"),
])
def test_bad_run_flags_exit_2_naming_the_value(capsys, argv, message):
    status, err = run_cli(capsys, argv)
    assert status == 2
    assert message in last_line(err)


def test_seed_range_is_torch_s_32_bits():
    """Why the bound: torch keeps the low 32 bits, so 2**32 would silently repeat seed 0."""
    assert FLConfig(seed=2**32 - 1).seed == 2**32 - 1
    with pytest.raises(ValueError):
        FLConfig(seed=2**32)


@pytest.mark.parametrize("argv, message", [
    (["--port", "-1"], "port: must be an integer from 0 to 65535, got -1"),
    (["--port", "70000"], "port: must be an integer from 0 to 65535, got 70000"),
    (["--timeout", "nan"], "timeout: must be a positive finite number"),
    (["--peers", "../x=127.0.0.1:1"], "bad worker name '../x'"),
])
def test_bad_worker_flags_exit_2(capsys, tmp_path, argv, message):
    data = tmp_path / "bob.csv"
    data.write_text("x0,label\n1,1\n")
    status, err = run_cli(capsys, ["worker", "--id", "bob", "--data", str(data), "--peers", "alice=127.0.0.1:1",
                                   "--insecure", *argv])
    assert status == 2
    assert message in last_line(err)


def test_split_data_refuses_names_with_path_separators_and_writes_nothing(capsys, tmp_path):
    out = tmp_path / "out"
    status, err = run_cli(capsys, ["split-data", "--out", str(out), "--workers", "../evil,b"])
    assert status == 2 and "'../evil'" in last_line(err)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["1e39", "-1e39", "3.5e38"])
def test_a_value_beyond_float32_in_an_owner_csv_is_refused(capsys, tmp_path, value):
    """float('1e39') is finite in float64 but inf in float32, the dtype the worker would serve."""
    bad = tmp_path / "bad.csv"
    bad.write_text(f"x0,label\n{value},1\n0,0\n")
    status, err = run_cli(capsys, ["split-data", "--out", str(tmp_path / "o"), "--csv", str(bad)])
    assert status == 2 and "line 2, column 1: NaN, infinite or beyond-float32 value" in last_line(err)
    status, err = run_cli(capsys, ["worker", "--id", "bob", "--data", str(bad), "--peers", "alice=127.0.0.1:1",
                                   "--insecure"])
    assert status == 2 and "line 2" in last_line(err)


@pytest.fixture(scope="module")
def checkpoint_doc():
    """A real 2-round checkpoint of a 5-round run, as a JSON document to corrupt."""
    history = train_federated(FLConfig(seed=3, rounds=5), on_round=lambda r, h: None)
    history.rounds = history.rounds[:2]
    return {"format": FORMAT, "completed_rounds": 2, **history.to_dict()}


def deeply_nested(depth=100000):
    return "[" * depth + "]" * depth


CORRUPTIONS = {
    "deeply nested JSON": (None, "nested too deeply"),
    "string global_loss": (lambda d: d["rounds"][0].update(global_loss="1.5"), "rounds[0].global_loss: expected a number"),
    "empty model": (lambda d: d["rounds"][1].update(model={}), "rounds[1].model: expected a non-empty object"),
    "1-D weight": (lambda d: d["rounds"][1]["model"].update(weight=[0.1, 0.2, 0.3]), "differ from the initial model"),
    "wrong-shape weight": (lambda d: d["rounds"][1]["model"].update(weight=[[0.1, 0.2]]),
                           "differ from the initial model"),
    "3-D initial weight": (lambda d: [d["initial_model"].update(weight=[[[0.1, 0.2, 0.3]]]),
                                      [r["model"].update(weight=[[[0.1, 0.2, 0.3]]]) for r in d["rounds"]]],
                           "initial_model.weight has shape (1, 1, 3)"),
    "NaN model": (lambda d: d["rounds"][1]["model"].update(bias=[float("nan")]), "contains NaN, Infinity"),
    "huge model value": (lambda d: d["rounds"][1]["model"].update(bias=[1e39]), "too large for float32"),
    "workers as a string": (lambda d: d["config"].update(workers="bob"), "config.workers must be a list of names"),
    "bad worker name": (lambda d: d["config"].update(workers=["../x", "b"]), "names must be 1-64 letters"),
    "unknown config key": (lambda d: d["config"].update(colour="blue"), "unexpected keyword argument 'colour'"),
    "rounds out of order": (lambda d: d["rounds"].reverse(), "numbered 1, 2, ... in order"),
    "worker_losses not an object": (lambda d: d["rounds"][0].update(worker_losses=[1]), "worker_losses: expected"),
    "epsilon of a stranger": (lambda d: d["rounds"][0].update(epsilon={"eve": 1.0}), "rounds[0].epsilon: expected"),
    "negative epsilon": (lambda d: d["rounds"][1].update(epsilon={"bob": -1.0}), "rounds[1].epsilon.bob: epsilon"),
    "stopped not a string": (lambda d: d.update(stopped=3), "stopped: expected a string"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_resume_from_a_malformed_checkpoint_exits_2_naming_the_field(capsys, tmp_path, checkpoint_doc, case):
    corrupt, message = CORRUPTIONS[case]
    path = tmp_path / "run.json"
    if corrupt is None:
        path.write_text(deeply_nested())
    else:
        doc = copy.deepcopy(checkpoint_doc)
        corrupt(doc)
        path.write_text(json.dumps(doc))
    before = path.read_bytes()
    status, err = run_cli(capsys, ["--resume", str(path), "--checkpoint", str(path), "--json"])
    assert status == 2  # a file given on the command line: bad input, as the README says
    assert message in last_line(err) and str(path) in last_line(err)
    assert path.read_bytes() == before  # the checkpoint was not overwritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_json_output_is_always_valid_json(capsys, tmp_path, checkpoint_doc):
    """A run whose numbers include a non-finite loss still prints strict JSON: NaN/Infinity become null."""
    from fl_smpc.history_io import history_from_dict

    history = history_from_dict(copy.deepcopy(checkpoint_doc))
    history.rounds[0].global_loss = math.inf
    history.rounds[1].worker_losses["bob"] = math.nan
    path = tmp_path / "run.json"
    save_checkpoint(str(path), history)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    doc = json.loads(text)
    assert doc["rounds"][0]["global_loss"] is None and doc["rounds"][1]["worker_losses"]["bob"] is None
    status, err = run_cli(capsys, ["--resume", str(path), "--json"])
    assert status == 2 and "rounds[0].global_loss: expected a number" in last_line(err)


# --- issue 18: the hostile inputs that ended in a traceback or exited 1, and nothing half-written ---


def files_below(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("argv, message", [
    (["--workers", ",".join(f"w{i}" for i in range(7))], "cannot split 6 data rows across 7 workers"),
    (["--csv", "SHORT"], "cannot split 2 data rows across 3 workers"),
    (["--csv", "SHORT", "--workers", "a,b"], None),  # fits: 1 row each
])
def test_split_data_with_more_owners_than_rows_exits_2_and_writes_nothing(capsys, tmp_path, argv, message):
    short = tmp_path / "short.csv"
    short.write_text("x0,label\n1,1\n0,0\n")
    out = tmp_path / "deep" / "out"
    status, err = run_cli(capsys, ["split-data", "--out", str(out), *[str(short) if a == "SHORT" else a for a in argv]])
    if message is None:
        assert status == 0 and files_below(out) == ["a.csv", "b.csv"]
        return
    assert status == 2 and err.count("\n") == 1 and err.startswith("fl-smpc split-data: error: ") and message in err
    assert files_below(tmp_path) == ["short.csv"]


def test_split_data_failing_mid_write_leaves_nothing(capsys, tmp_path, monkeypatch):
    import fl_smpc.network.csvdata as csvdata

    real, calls = csvdata.write_csv, []

    def disk_full_on_the_second(path, data, target):
        calls.append(path)
        if len(calls) == 2:
            open(path, "w").write("x0,x1")  # half a file, then the disk is full
            raise OSError(28, "No space left on device")
        real(path, data, target)

    monkeypatch.setattr(csvdata, "write_csv", disk_full_on_the_second)
    out = tmp_path / "new" / "out"
    status, err = run_cli(capsys, ["split-data", "--out", str(out)])
    assert status == 2 and "No space left on device; nothing was written" in last_line(err)
    assert files_below(tmp_path) == []  # neither the files nor the directories made for them


def test_split_data_into_a_directory_holding_a_directory_named_like_an_owner_file(capsys, tmp_path):
    (tmp_path / "alice.csv").mkdir()
    status, err = run_cli(capsys, ["split-data", "--out", str(tmp_path)])
    assert status == 2 and "alice.csv is a directory; nothing was written" in last_line(err)
    assert files_below(tmp_path) == ["alice.csv"]


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "sms", "--data-file", "MISSING"], "cannot read: No such file or directory"),
    (["--dataset", "sms", "--data-file", "NUL"], "line 1: not a CSV line: line contains NUL"),
    (["--dataset", "sms", "--data-file", "NEWLINE"], "a\\nb.tsv: cannot read"),
    (["--resume", "MISSING"], "cannot read checkpoint"),
    (["--resume", "NUL"], "cannot read checkpoint"),
    (["--checkpoint", "DIR"], "it is a directory"),
    (["--transport", "websocket", "--workers", "a=127.0.0.1:1,b=127.0.0.1:1,c=127.0.0.1:1", "--certs", "MISSING"],
     "no such directory"),
    (["--transport", "websocket", "--workers", "a=127.0.0.1:1,b=127.0.0.1:1,c=127.0.0.1:1", "--certs", "DIR"],
     "ca.pem"),
    (["--dataset", "sms", "--features", str(2**17)], "features: at most 65536"),
    (["--plot", "OUT/x.foo"], "must end in a picture format"),
    (["--plot", "OUT/x.png", "--history", "OUT/x.png"], "is also --history's file"),
    (["--history", "NUL", "--resume", "NUL"], "--history"),
])
def test_bad_input_files_exit_2_with_one_line(capsys, tmp_path, argv, message):
    (tmp_path / "nul.json").write_bytes(b"\x00\x01")
    (tmp_path / "out").mkdir()
    names = {"MISSING": tmp_path / "missing", "NUL": tmp_path / "nul.json", "DIR": tmp_path / "out",
             "NEWLINE": tmp_path / "a\nb.tsv"}
    argv = [str(names[a]) if a in names else a.replace("OUT", str(tmp_path / "out")) for a in argv]
    status, err = run_cli(capsys, argv)
    assert status == 2, err
    assert message in last_line(err) and last_line(err).startswith("fl-smpc: error: ")
    assert len([line for line in err.splitlines() if "error" in line]) == 1
    assert files_below(tmp_path) == ["nul.json", "out"] and (tmp_path / "nul.json").read_bytes() == b"\x00\x01"


def test_a_model_that_does_not_fit_is_a_config_error():
    from torch import nn

    from fl_smpc.errors import ConfigError

    with pytest.raises(ConfigError, match="model does not accept data rows"):
        train_federated(FLConfig(seed=0), model=nn.Linear(4, 1))


def test_a_picture_that_fails_mid_write_leaves_nothing(capsys, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def half_then_fail(self, path, **kwargs):
        open(path, "wb").write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", half_then_fail)
    png, table = tmp_path / "x.png", tmp_path / "h.csv"
    status, err = run_cli(capsys, ["--seed", "0", "--rounds", "1", "--plot", str(png), "--history", str(table)])
    assert status == 1 and f"cannot write {png}: No space left on device" in err
    assert files_below(tmp_path) == []  # no picture, no temporary file (and --history, after it, not reached)


def test_a_history_csv_that_cannot_be_made_leaves_nothing(tmp_path, checkpoint_doc):
    from fl_smpc.errors import ConfigError
    from fl_smpc.history_io import history_from_dict, write_history_csv

    history = history_from_dict(copy.deepcopy(checkpoint_doc))
    history.rounds[0].metrics["worker"] = 1.0  # clashes with a column
    with pytest.raises(ConfigError, match="clash with the history columns"):
        write_history_csv(history, tmp_path / "h.csv")
    assert files_below(tmp_path) == []


def test_a_checkpoint_that_fails_mid_write_keeps_the_previous_one(tmp_path, checkpoint_doc, monkeypatch):
    import fl_smpc.history_io
    from fl_smpc.history_io import history_from_dict

    path = tmp_path / "run.json"
    history = history_from_dict(copy.deepcopy(checkpoint_doc))
    save_checkpoint(str(path), history)
    before = path.read_bytes()

    def fsync_fails(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fl_smpc.history_io.os, "fsync", fsync_fails)
    history.rounds = history.rounds[:1]
    with pytest.raises(OSError):
        save_checkpoint(str(path), history)
    assert path.read_bytes() == before and files_below(tmp_path) == ["run.json"]


@pytest.mark.parametrize("flag, message", [
    ("--plot", "is not writable"), ("--history", "is not writable"), ("--checkpoint", "directory is not writable"),
])
def test_an_output_in_a_directory_we_may_not_write_exits_2_before_training(capsys, tmp_path, monkeypatch, flag,
                                                                             message):
    """(As root every directory is writable: os.access stands in for a read-only one.)"""
    import os

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    status, err = run_cli(capsys, ["--seed", "0", flag, str(tmp_path / "x.png")])
    assert status == 2 and message in last_line(err) and "round 1" not in err
    assert files_below(tmp_path) == []
