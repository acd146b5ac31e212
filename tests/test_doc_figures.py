"""The figures in the docs are what the code prints now (benchmarks/doc_figures.py; `make figures` rewrites them).

Fast figures are made afresh and compared whole. The Boston tables (10 epochs, about 80 s) are checked on
the rows a fresh one-epoch run makes; the SMS run's times are the machine's and are left out. The DP runs'
losses are noise from a CSPRNG (not the seed): their epsilon column and round count are checked against the
owners' accountant, their first rows against a fresh one-round run, the losses only for being numbers.
"""
import re

import pytest

import doc_figures


@pytest.mark.parametrize("name", ["sample-output", "toy-results"])
def test_figure_is_a_fresh_run(name):
    assert doc_figures.FIGURES[name][1]() == doc_figures.shown(name)


def without_times(text):
    """The SMS comparison's last column (seconds) blanked: it is the machine's, not the code's."""
    return re.sub(r"(?m) +\d+\.\d$", " <s>", text)


@pytest.mark.slow
def test_sms_rounds_are_a_fresh_run():
    assert without_times(doc_figures.sms_rounds()) == without_times(doc_figures.shown("sms-rounds"))


def table_rows(text):
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]


@pytest.mark.slow
def test_boston_tables_start_like_a_fresh_first_epoch():
    fresh, shown = table_rows(doc_figures.boston_api(epochs=1)), table_rows(doc_figures.shown("boston-api"))
    assert fresh[:4] == shown[:4]  # header, rule, epochs 0 and 1 at both precisions
    assert len(shown) == 2 + doc_figures.BOSTON_EPOCHS + 1
    fresh, shown = table_rows(doc_figures.boston_readme(epochs=1)), table_rows(doc_figures.shown("boston-readme"))
    for row in (2, 3):  # secure and plaintext: epochs 0 and 1
        assert fresh[row][:3] == shown[row][:3]


def test_every_marked_figure_is_known():
    """A `<!-- figure NAME -->` block that no generator makes would go stale unseen."""
    for path in {path for path, _ in doc_figures.FIGURES.values()}:
        names = re.findall(r"<!-- figure (\S+) -->", path.read_text(encoding="utf-8"))
        assert names and set(names) <= set(doc_figures.FIGURES), path
        for name in names:
            assert doc_figures.FIGURES[name][0] == path


# --- the DP runs (docs/privacy-runs.md): the noise is a CSPRNG's, so the losses differ every run ---

def part10_parameters():
    import runpy

    example = runpy.run_path(str(doc_figures.ROOT / "examples" / "boston_housing.py"))
    return sum(p.numel() for p in example["Net"]().parameters())


def dp_figure_settings(name):
    """(the run's FLConfig, the values an owner releases per round: P + 1), built here, not by the figure."""
    from fl_smpc import FLConfig

    if name == "dp-toy":
        return doc_figures.cli_config(doc_figures.DP_TOY_ARGS), 4 + 1  # nn.Linear(3, 1)
    config = FLConfig(workers=("bob", "alice"), min_owners=2, training="owner", local_steps=1, precision_fractional=3,
                      rounds=doc_figures.PART10_DP_ROUNDS, **doc_figures.PART10_DP)
    return config, part10_parameters() + 1


@pytest.mark.parametrize("name", ["dp-toy", "dp-part10"])
def test_dp_figure_shows_the_accountants_epsilon_and_a_fresh_first_round(name):
    """The doc's epsilon column and round count are the owners' accountant's for the figure's settings (every
    row); a fresh one-round run makes the same first rows but for the DP losses, which are only numbers."""
    from fl_smpc.data_owner.privacy import OwnerBudget

    shown = doc_figures.shown(name)
    mask = doc_figures.COMPARED[name]
    rows = table_rows(mask(shown))  # ValueError if a DP loss is not a number
    fresh = doc_figures.FIGURES[name][1](rounds=1)
    assert table_rows(mask(fresh)) == rows[:4]  # header, rule, rounds 0 and 1
    config, released = dp_figure_settings(name)
    budget = OwnerBudget.for_settings(config.dp_settings(), config.precision_fractional, released)
    allowed = next(k for k in range(1, config.rounds + 2) if budget.epsilon_after(k) > config.dp_epsilon) - 1
    assert 0 < allowed < config.rounds and f"stopped cleanly after {allowed}." in shown
    for row in rows[2:]:
        n = int(row[0])
        expected = "0" if n == 0 else f"{budget.epsilon_after(n):.3f}" if n <= allowed else "–"
        assert row[1] == expected, row
    assert int(rows[-1][0]) == (allowed if name == "dp-part10" else config.rounds)
