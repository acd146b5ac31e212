"""--plot, --history and the progress bar: files people open elsewhere, and clean --json output."""
import csv
import functools
import io
import json
import sys

import pytest

from fl_smpc import FLConfig
from fl_smpc.cli import main
from fl_smpc.federated import History, RoundResult
from fl_smpc.history_io import history_rows, write_history_csv
from fl_smpc.plots import plot_history

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def matplotlib_config_in_tmp(tmp_path_factory):
    """matplotlib writes its font cache to MPLCONFIGDIR on first import: keep it out of $HOME."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MPLCONFIGDIR", str(tmp_path_factory.mktemp("mplconfig")))
    yield
    mp.undo()


def synthetic_history(with_f1=True) -> History:
    """Three owners, three rounds, hand-made numbers (the shape an SMS run with test metrics has)."""
    config = FLConfig(workers=("bob", "alice", "jane"), rounds=3, seed=7)
    rounds = [
        RoundResult(r, {"bob": 1.0 / r, "alice": 2.0 / r, "jane": 3.0 / r}, 5.0 / r, {},
                    {"f1": 0.5 + 0.1 * r, "accuracy": 0.9} if with_f1 else {})
        for r in (1, 2, 3)
    ]
    return History(config, {}, 6.0, rounds, {"f1": 0.2} if with_f1 else {})


def test_figure_has_one_line_per_series_and_labelled_axes():
    fig = plot_history(synthetic_history(with_f1=False))
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 1 + 3  # global loss + one per owner
    assert ax.get_xlabel() == "round" and ax.get_ylabel() == "loss (log scale)" and ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()][1:] == [
        "bob: local loss (last local step)", "alice: local loss (last local step)", "jane: local loss (last local step)"]
    assert list(ax.get_lines()[0].get_xdata()) == [0, 1, 2, 3]
    assert list(ax.get_lines()[0].get_ydata()) == [6.0, 5.0, 2.5, 5.0 / 3]
    assert "seed 7" in fig._suptitle.get_text()


def test_f1_panel_with_baseline_when_rounds_have_f1():
    fig = plot_history(synthetic_history(), baseline=0.93)
    loss_ax, f1_ax = fig.axes
    assert len(loss_ax.get_lines()) == 4
    f1_line, baseline_line = f1_ax.get_lines()
    assert list(f1_line.get_xdata()) == [0, 1, 2, 3]  # round 0 = the initial model's metrics
    assert list(f1_line.get_ydata()) == pytest.approx([0.2, 0.6, 0.7, 0.8])
    assert list(baseline_line.get_ydata()) == [0.93, 0.93]
    assert f1_ax.get_ylabel() == "test f1" and f1_ax.get_xlabel() == "round"
    assert "centralized baseline" in f1_ax.get_legend().get_texts()[1].get_text()


def test_csv_rows_carry_metrics_when_present(tmp_path):
    history = synthetic_history()
    with write_history_csv(history, tmp_path / "h.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["round", "worker", "local_loss", "global_loss", "accuracy", "f1"]
    assert len(rows) == 3 * 3
    assert [(r["round"], r["worker"]) for r in rows[:4]] == [("1", "bob"), ("1", "alice"), ("1", "jane"), ("2", "bob")]
    assert [float(r["f1"]) for r in rows[::3]] == pytest.approx([0.6, 0.7, 0.8])
    assert float(rows[7]["local_loss"]) == 2.0 / 3


def test_metric_named_like_a_column_is_refused():
    history = synthetic_history()
    history.rounds[0].metrics["round"] = 1.0
    with pytest.raises(ValueError, match="clash"):
        history_rows(history)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One default-settings CLI run (2 rounds) writing --json to stdout, --plot and --history files."""
    out = tmp_path_factory.mktemp("cli")
    png, table = out / "training.png", out / "history.csv"
    argv = ["--seed", "0", "--rounds", "2", "--json", "--plot", str(png), "--history", str(table)]
    return cli_json(argv), png, table


def cli_json(argv):
    """``fl-smpc ARGV`` in this process (exit 0), its --json document (stdout captured for a module fixture)."""
    capture = pytest.MonkeyPatch()
    stdout = io.StringIO()
    capture.setattr(sys, "stdout", stdout)
    try:
        status = main(argv)
    finally:
        capture.undo()
    assert status == 0
    return json.loads(stdout.getvalue())


def test_plot_writes_a_png(cli_run):
    from PIL import Image

    _, png, _ = cli_run
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] >= 600 and image.size[1] >= 300


def test_history_csv_matches_json(cli_run):
    doc, _, table = cli_run
    with table.open() as f:
        rows = list(csv.DictReader(f))
    workers = doc["config"]["workers"]
    assert [(int(r["round"]), r["worker"]) for r in rows] == [(n, w) for n in (1, 2) for w in workers]
    for row in rows:
        json_round = doc["rounds"][int(row["round"]) - 1]
        assert float(row["global_loss"]) == json_round["global_loss"]
        assert float(row["local_loss"]) == json_round["worker_losses"][row["worker"]]


@pytest.mark.parametrize("as_json", [True, False])
def test_progress_bar_only_without_json(as_json, capsys, monkeypatch):
    """Pretend stdout and stderr are terminals: the bar must show in text mode and never with --json."""
    for stream in (sys.stdout, sys.stderr):
        monkeypatch.setattr(stream, "isatty", lambda: True)
    assert main(["--seed", "0", "--rounds", "6", "--local-steps", "1"] + (["--json"] if as_json else [])) == 0
    out, err = capsys.readouterr()
    if as_json:
        json.loads(out)  # nothing but the document on stdout
        assert "rounds:" not in out + err and "round/s" not in out + err and "s/round" not in out + err
    else:
        assert "rounds:" in err and "/6 [" in err and "loss=" in err  # tqdm throttles redraws: not always 6/6
        assert "rounds:" not in out


def test_bad_output_directory_is_refused_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--plot", str(tmp_path / "missing" / "x.png")])
    assert exit_info.value.code == 2
    assert "--plot" in capsys.readouterr().err


def test_failed_run_still_writes_its_completed_rounds(tmp_path, capsys):
    """lr 40 makes seed 0's owners diverge in round 2: round 1 is kept in the CSV and the error names round 2."""
    table = tmp_path / "h.csv"
    assert main(["--seed", "0", "--rounds", "3", "--lr", "40", "--history", str(table)]) == 1
    assert "round 2 failed" in capsys.readouterr().err
    with table.open() as f:
        assert [(r["round"], r["worker"]) for r in csv.DictReader(f)] == [("1", "bob"), ("1", "alice"), ("1", "jane")]


# --- differential privacy: epsilon spent per owner per round is public, in the CSV and the picture ---

DP_RUN = dict(training="owner", dp="distributed", local_steps=1, lr=0.5, dp_sampling=0.5, dp_noise=3.0)


@functools.lru_cache(maxsize=None)
def expected_epsilon(config, rounds):
    """Epsilon after 1..rounds releases, from the owner's accountant built here for the same settings (the toy
    task's P = 4 parameters: the owner releases P + 1 values per round)."""
    from fl_smpc.data_owner.privacy import OwnerBudget

    budget = OwnerBudget.for_settings(config.dp_settings(), config.precision_fractional, 4 + 1)
    return tuple(budget.epsilon_after(k) for k in range(1, rounds + 1))


@pytest.fixture(scope="module")
def dp_cli_run(tmp_path_factory):
    """A 3-round toy run with --dp distributed through the CLI: --json on stdout, --plot and --history files
    (sampling rate 1: the owners' accountants are quick to build)."""
    out = tmp_path_factory.mktemp("dp")
    png, table = out / "dp.png", out / "dp.csv"
    argv = ["--seed", "0", "--rounds", "3", "--dp", "distributed", "--dp-sampling", "1", "--dp-noise", "3",
            "--json", "--plot", str(png), "--history", str(table)]
    return cli_json(argv), png, table


def test_dp_history_csv_has_each_owners_epsilon_per_round(dp_cli_run):
    from fl_smpc.history_io import history_from_dict

    doc, _, table = dp_cli_run
    with table.open() as f:
        rows = list(csv.DictReader(f))
    workers = doc["config"]["workers"]
    assert list(rows[0]) == ["round", "worker", "local_loss", "global_loss"] + [f"epsilon_{w}" for w in workers]
    assert [(r["round"], r["worker"], r["local_loss"]) for r in rows] == [(str(n), "(owners)", "") for n in (1, 2, 3)]
    expected = expected_epsilon(history_from_dict(doc).config, 3)
    for row, json_round, eps in zip(rows, doc["rounds"], expected):
        assert {w: float(row[f"epsilon_{w}"]) for w in workers} == json_round["epsilon"]
        assert all(float(row[f"epsilon_{w}"]) == pytest.approx(eps, rel=1e-9) for w in workers)


def test_dp_plot_has_an_epsilon_panel_with_the_budget(dp_cli_run):
    from fl_smpc.history_io import history_from_dict

    doc, png, _ = dp_cli_run
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    history = history_from_dict(doc)
    fig = plot_history(history)
    (eps_ax,) = fig.axes  # the owners release no loss with DP: no loss panel, nothing else to show
    *owner_lines, budget = eps_ax.get_lines()
    assert [line.get_label() for line in owner_lines] == [f"{w}: epsilon spent" for w in history.config.workers]
    expected = expected_epsilon(history.config, 3)
    for name, line in zip(history.config.workers, owner_lines):
        assert list(line.get_xdata()) == [0, 1, 2, 3]
        assert list(line.get_ydata()) == [0.0] + [r.epsilon[name] for r in history.rounds]
        assert list(line.get_ydata())[1:] == pytest.approx(expected, rel=1e-9)
    assert list(budget.get_ydata()) == [history.config.dp_epsilon] * 2 and budget.get_linestyle() == "--"
    assert eps_ax.get_xlabel() == "round" and eps_ax.get_ylabel().startswith("epsilon spent")
    assert "DP distributed" in fig._suptitle.get_text()


def test_dp_plot_steps_where_an_owner_sat_a_round_out_and_keeps_the_other_panels():
    """An owner left out of round 2 has no epsilon that round: its curve holds its round-1 value until round 3."""
    config = FLConfig(workers=("bob", "alice", "jane"), rounds=3, seed=7, min_owners=2, **DP_RUN)
    spent = [{"bob": 1.0, "alice": 1.0, "jane": 1.0}, {"bob": 1.5, "alice": 1.5},
             {"bob": 2.0, "alice": 2.0, "jane": 1.5}]
    rounds = [RoundResult(r, {}, float("nan"), {}, {"f1": 0.1 * r}, list(eps), epsilon=eps)
              for r, eps in zip((1, 2, 3), spent)]
    history = History(config, {}, float("nan"), rounds, {"f1": 0.0})
    f1_ax, eps_ax = plot_history(history).axes
    jane = eps_ax.get_lines()[2]
    assert list(jane.get_xdata()) == [0, 1, 3] and list(jane.get_ydata()) == [0.0, 1.0, 1.5]
    assert jane.get_drawstyle() == "steps-post"
    assert f1_ax.get_ylabel() == "test f1"
    rows = history_rows(history)
    assert [row["epsilon_jane"] for row in rows] == [1.0, "", 1.5] and [row["epsilon_bob"] for row in rows] == [
        1.0, 1.5, 2.0]


def test_a_metric_named_like_an_epsilon_column_is_refused():
    config = FLConfig(workers=("bob", "alice", "jane"), rounds=1, seed=7, **DP_RUN)
    history = History(config, {}, float("nan"), [RoundResult(1, {}, float("nan"), {}, {"epsilon_bob": 1.0},
                                                             epsilon={"bob": 1.0})])
    with pytest.raises(ValueError, match="clash"):
        history_rows(history)


def test_the_sms_table_has_an_epsilon_column_with_dp():
    from fl_smpc.history_io import SMS_COLUMNS, format_sms_row, sms_columns

    metrics = {"accuracy": 0.9, "precision": 0.8, "recall": 0.7, "f1": 0.75}
    assert sms_columns(FLConfig()) == SMS_COLUMNS  # no DP: the table is unchanged
    header = sms_columns(FLConfig(**DP_RUN))
    assert header.startswith(SMS_COLUMNS) and header.split()[-2:] == ["epsilon", "spent"]
    assert format_sms_row(3, 0.5, metrics) == format_sms_row(3, 0.5, metrics, None)
    row = format_sms_row(3, 0.5, metrics, {"bob": 1.25, "alice": 1.25})
    assert row.startswith(format_sms_row(3, 0.5, metrics)) and row.split()[-1] == "1.250"
    assert len(row) == len(header)  # the number sits under its heading
    assert format_sms_row(0, 0.5, metrics, {}).split()[-1] == "0"
    assert format_sms_row(3, 0.5, metrics, {"bob": 1.25, "alice": 2.0}).endswith("bob 1.250, alice 2.000")


def test_owner_side_training_plots_the_owners_mean_local_loss():
    """--training owner releases no single owner's loss: the loss panel has the global loss and the owners' mean."""
    config = FLConfig(workers=("bob", "alice", "jane"), rounds=2, seed=7, training="owner")
    rounds = [RoundResult(r, {}, 5.0 / r, {}, local_loss=1.0 / r, contributors=["bob", "alice", "jane"]) for r in (1, 2)]
    (ax,) = plot_history(History(config, {}, 6.0, rounds)).axes
    global_line, mean_line = ax.get_lines()
    assert "owners' weighted mean" in mean_line.get_label()
    assert list(mean_line.get_xdata()) == [1, 2] and list(mean_line.get_ydata()) == [1.0, 0.5]
