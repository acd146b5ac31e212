"""The command line, called in-process through main(argv)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fl_smpc.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_json(capsys, *args):
    assert main(["--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_document_has_the_stable_keys(capsys):
    doc = run_json(capsys, "--seed", "0", "--rounds", "2", "--workers", "bob,alice,jane")
    assert doc["config"] == {"workers": ["bob", "alice", "jane"], "rounds": 2, "local_steps": 5, "lr": 0.1,
                             "precision_fractional": 3, "seed": 0, "batch_size": None, "loss_reduction": "sum",
                             "weighting": "samples", "min_owners": 3, "owners_per_round": None,
                             "aggregation": "additive", "training": "tutorial", "neighbours": None, "dp": None,
                             "dp_epsilon": 3.0, "dp_delta": 1e-5, "dp_noise": None, "dp_clip": 1.0, "dp_sampling": 0.05,
                             "dp_bias_lr": 1.0, "dp_accountant": "prv"}
    assert len(doc["initial_model"]["weight"]) == 1 and len(doc["initial_model"]["weight"][0]) == 3
    assert len(doc["initial_model"]["bias"]) == 1
    assert [r["round"] for r in doc["rounds"]] == [1, 2]
    for r in doc["rounds"]:
        assert set(r["worker_losses"]) == {"bob", "alice", "jane"}
        assert isinstance(r["global_loss"], float)
        assert set(r["model"]) == {"weight", "bias"}


def test_same_seed_same_json(capsys):
    assert run_json(capsys, "--seed", "11") == run_json(capsys, "--seed", "11")


def test_text_output_reads_like_the_seed(capsys):
    assert main(["--seed", "0", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "round 2/2" in out and "avg weight" in out and "avg bias" in out
    assert "Bob_loss:" in out and "Alice_loss:" in out and "Jane_loss:" in out


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "0"], "rounds: must be a positive integer"),
    (["--rounds", "two"], "invalid int value"),
    (["--lr", "-1"], "lr: must be a positive finite number"),
    (["--workers", "bob"], "at least 2 workers"),
    (["--workers", "bob,bob"], "duplicate worker names"),
    (["--precision", "40"], "precision_fractional"),
])
def test_bad_flags_exit_non_zero_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_failed_round_exits_1_with_the_reason(capsys):
    assert main(["--seed", "0", "--lr", "1e10"]) == 1
    assert "round 1 failed: worker 'bob' holds non-finite" in capsys.readouterr().err


def test_script_runs_and_import_is_light():
    """The thin script works as a program; `import fl_smpc` imports neither torch nor syft."""
    out = subprocess.run([sys.executable, str(ROOT / "federated_learning_smpc.py"), "--seed", "0", "--rounds", "1"],
                         capture_output=True, text=True, check=True).stdout
    assert "round 1/1" in out
    probe = "import sys, fl_smpc; fl_smpc.FLConfig(); print(sorted({'torch', 'syft'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_a_reader_that_goes_away_ends_the_run_quietly():
    """`fl-smpc ... | head`: the pipe's reader closes it; the command stops with 141 and no traceback."""
    process = subprocess.Popen([sys.executable, "-m", "fl_smpc", "--seed", "0", "--rounds", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    process.stdout.close()  # before the first line: every write fails
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 141 and b"Traceback" not in stderr, stderr.decode()
