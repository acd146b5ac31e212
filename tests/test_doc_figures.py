"""The figures in the docs are what the code prints now (benchmarks/doc_figures.py; `make figures` rewrites them).

Fast figures are made afresh and compared whole. The Boston tables (10 epochs, about 80 s) are checked on
the rows a fresh one-epoch run makes; the SMS run's times are the machine's and are left out.
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
