"""What the command prints while it runs and when it fails, saved models and `fl-smpc classify`, resuming a
finished run, the demo's own help, `make run` piped (issue 19)."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fl_smpc.cli import main
from fl_smpc.history_io import load_checkpoint
from fl_smpc.model_file import load_model

ROOT = Path(__file__).resolve().parent.parent
DIVERGES_IN_ROUND_3 = ["--seed", "0", "--lr", "2"]  # rounds 1 and 2 complete, then the parameters overflow int64


def test_text_rounds_appear_while_the_run_goes():
    """Piped stdout shows round 1 while later rounds are still training (each block is flushed)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "federated_learning_smpc.py"), "--seed", "0", "--rounds", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().startswith("seed 0; workers bob, alice, jane; initial global loss 6.7036")
        assert proc.stdout.readline().startswith("round 1/60  global loss 1.3792")
        assert proc.poll() is None, "round 1 was printed only when the run had ended"
    finally:
        proc.kill()
        proc.communicate()


def test_a_failed_run_keeps_the_rounds_it_printed(capsys):
    assert main(DIVERGES_IN_ROUND_3) == 1
    out, err = capsys.readouterr()
    assert "round 1/5" in out and "round 2/5" in out and "round 3/5" not in out
    assert err.count("\n") == 1 and "round 3 failed" in err and "lower the learning rate" in err


@pytest.mark.parametrize("aggregation", ["additive", "pairwise"])
def test_an_overflow_from_a_diverging_lr_says_lower_the_learning_rate(capsys, aggregation):
    assert main([*DIVERGES_IN_ROUND_3, "--aggregation", aggregation]) == 1
    err = capsys.readouterr().err
    assert "would overflow syft's int64 fixed-precision field" in err and "lower the learning rate" in err, err


def test_a_failed_json_run_is_still_one_json_document(capsys):
    assert main([*DIVERGES_IN_ROUND_3, "--json"]) == 1
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert [r["round"] for r in doc["rounds"]] == [1, 2]
    assert doc["failed_round"] == 3 and doc["error"].startswith("round 3 failed: worker 'bob' holds parameters")
    assert doc["error"] in err and doc["config"]["lr"] == 2.0


def test_a_json_run_that_fails_before_round_1_still_prints_json(tmp_path, capsys):
    missing = tmp_path / "missing.json"
    assert main(["--resume", str(missing), "--json"]) == 2  # a bad input file: exit 2, still one document
    doc = json.loads(capsys.readouterr().out)
    assert doc["rounds"] == [] and "cannot read checkpoint" in doc["error"] and doc["failed_round"] is None


def test_jsonl_is_one_line_per_round_then_end(capsys):
    assert main(["--seed", "0", "--rounds", "2", "--jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["type"] for line in lines] == ["start", "round", "round", "end"]
    assert main(["--seed", "0", "--rounds", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [{k: v for k, v in line.items() if k != "type"} for line in lines[1:3]] == doc["rounds"]
    assert {k: v for k, v in lines[0].items() if k != "type"} == {k: v for k, v in doc.items() if k != "rounds"}
    assert lines[-1] == {"type": "end", "completed_rounds": 2}


def test_jsonl_failure_ends_with_an_error_line(capsys):
    assert main([*DIVERGES_IN_ROUND_3, "--jsonl"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["type"] for line in lines] == ["start", "round", "round", "error"]
    assert lines[-1]["failed_round"] == 3 and lines[-1]["completed_rounds"] == 2


def test_json_and_jsonl_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--json", "--jsonl"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_save_model_writes_a_state_dict_torch_loads(tmp_path, capsys):
    path = tmp_path / "toy.pt"
    assert main(["--seed", "0", "--rounds", "2", "--json", "--save-model", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    saved = torch.load(str(path))
    model = torch.nn.Linear(saved["model"]["in_features"], saved["model"]["out_features"])
    model.load_state_dict(saved["state_dict"])
    assert model.weight.tolist() == doc["rounds"][-1]["model"]["weight"]
    assert saved["config"] == doc["config"] and saved["rounds"] == 2 and saved["dataset"] == "toy"
    assert load_model(path).model.bias.tolist() == doc["rounds"][-1]["model"]["bias"]
    messages = tmp_path / "messages.txt"
    messages.write_text("free prize\n")
    assert main(["classify", "--model", str(path), "--messages", str(messages)]) == 2
    assert "not on messages: train one with --dataset sms --save-model PATH" in capsys.readouterr().err


def test_a_saved_sms_model_classifies_new_messages(tmp_path, capsys):
    from fl_smpc.sms.corpus import featurize

    path = tmp_path / "sms.pt"
    assert main(["--dataset", "sms", "--seed", "0", "--rounds", "3", "--save-model",
                 str(path)]) == 0
    capsys.readouterr()
    texts = ["WINNER!! You have won a free prize, call 09061701461 to claim now", "are we still on for lunch?"]
    messages = tmp_path / "messages.txt"
    messages.write_text(f"{texts[0]}\n\n{texts[1]}\n", encoding="utf-8")
    assert main(["classify", "--model", str(path), "--messages", str(messages)]) == 0
    assert capsys.readouterr().out.splitlines() == ["spam", "", "ham"]  # blank lines stay, so lines match up
    saved = load_model(path)
    scores = saved.model(featurize(texts, saved.info["features"])).view(-1)
    assert saved.info["threshold"] == 0.0 and (scores[0] > 0) and (scores[1] < 0)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"not a torch file", "cannot read a saved model"),
])
def test_a_bad_model_file_is_one_line_exit_2(tmp_path, capsys, content, message):
    path, messages = tmp_path / "model.pt", tmp_path / "m.txt"
    messages.write_text("hello\n")
    if content is not None:
        path.write_bytes(content)
    assert main(["classify", "--model", str(path), "--messages", str(messages)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_model_file_of_another_kind_is_refused(tmp_path, capsys):
    path, messages = tmp_path / "model.pt", tmp_path / "m.txt"
    messages.write_text("hello\n")
    torch.save(torch.nn.Linear(3, 1).state_dict(), str(path))  # a bare state dict: no settings to rebuild it
    assert main(["classify", "--model", str(path), "--messages", str(messages)]) == 2
    assert "not an fl-smpc model file" in capsys.readouterr().err


def test_resume_with_more_rounds_continues_a_finished_run(tmp_path, capsys):
    path = str(tmp_path / "run.json")
    assert main(["--seed", "0", "--rounds", "2", "--checkpoint", path]) == 0
    capsys.readouterr()
    assert main(["--resume", path]) == 2
    assert "the run is finished (2 of 2 rounds); to continue it, give --rounds N with N > 2" in capsys.readouterr().err
    assert main(["--resume", path, "--rounds", "1"]) == 2
    assert "can be extended (--rounds 2 or more)" in capsys.readouterr().err
    assert main(["--resume", path, "--rounds", "5", "--checkpoint", path, "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert main(["--seed", "0", "--json"]) == 0
    uninterrupted = json.loads(capsys.readouterr().out)
    assert resumed == uninterrupted  # the config records 5 rounds, and the model is the same
    assert load_checkpoint(path).to_dict() == resumed


def test_a_resumed_run_prints_the_saved_rounds_too(tmp_path, capsys):
    path = str(tmp_path / "run.json")
    assert main(["--seed", "0", "--rounds", "2", "--checkpoint", path]) == 0
    capsys.readouterr()
    assert main(["--resume", path, "--rounds", "3"]) == 0
    resumed = capsys.readouterr().out
    assert main(["--seed", "0", "--rounds", "3"]) == 0
    assert resumed == capsys.readouterr().out


def test_demo_network_help_is_its_own(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo-network", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith("usage: fl-smpc demo-network")
    for flag in ("--transport", "--dataset", "--data-file", "--partition", "--loss", "--features"):
        assert f"[{flag}" not in out, flag
    assert "--certs DIR" in out and "--insecure" in out and "--rounds" in out


def test_make_run_does_not_echo_its_recipe():
    """`make run ARGS="--json" | python3 -m json.tool` needs stdout to be the program's alone."""
    makefile = (ROOT / "Makefile").read_text().splitlines()
    recipe = makefile[makefile.index("run: $(STAMP)") + 1]
    assert recipe.startswith("\t@$(PY) federated_learning_smpc.py"), recipe
    notebook = "\n".join(makefile[makefile.index("notebook: $(STAMP)"):][:4])
    assert '[ "$$(id -u)" = 0 ] && echo --allow-root' in notebook
