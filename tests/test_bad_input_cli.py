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
    assert status == 2 and "line 2: NaN, infinite or beyond-float32 value" in last_line(err)
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
