"""The figures the docs show, made by the code: sample outputs and result tables between markers.

    .venv/bin/python benchmarks/doc_figures.py [--check] [NAME ...]      # make figures = all of them, written

In README.md and docs/*.md a figure stands between ``<!-- figure NAME -->`` and ``<!-- /figure -->``.
Without ``--check`` each named figure (default: all) is made afresh and written between its markers;
with ``--check`` nothing is written and the exit status is 1 if a figure differs. ``tests/test_doc_figures.py``
makes the fast figures afresh and compares them, and the first epoch of the slow Boston figures.

Figures: sample-output (``make run ARGS="--seed 0"``), toy-results (README's Results table), sms-rounds
(docs/sms.md's per-round output; its times are the machine's), boston-readme and boston-api (Part 10, 10
epochs at precision 3 and 6: about 80 s), dp-readme and dp-privacy (the DP table, from docs/data/dp_sms.csv,
which ``make dp-study`` measures).
"""

import argparse
import contextlib
import functools
import io
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
README, API, SMS = ROOT / "README.md", ROOT / "docs" / "api.md", ROOT / "docs" / "sms.md"
PRIVACY = ROOT / "docs" / "privacy.md"
BOSTON_EPOCHS = 10
README_EPOCHS = (0, 1, 2, 4, 6, 8, 10)
# Measured before owners rounded to nearest (syft's truncating fix_prec): the code cannot make it any more.
TRUNCATION_ROW = "| secure with syft's truncation (before) | 558.65 | 298.19 | 41.62 | 32.99 | 29.74 | 28.13 | 27.37 |"
SMS_ROUNDS = (0, 1, 2, 5, 10, 20)


def cli_output(argv: List[str]) -> str:
    """What ``fl-smpc ARGV`` prints on stdout (in this process)."""
    from fl_smpc.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        status = main(argv)
    if status != 0:
        raise RuntimeError(f"fl-smpc {' '.join(argv)} exited {status}")
    return out.getvalue()


def short_e(x: float) -> str:
    """``2.7e-4`` (not ``2.7e-04``), as the docs write it."""
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def sample_output() -> str:
    """README: the start and the end of ``make run ARGS="--seed 0"``."""
    lines = cli_output(["--seed", "0"]).splitlines()
    return "\n".join(["```text", *lines[:5], "...", *lines[-4:], "```"])


def toy_results() -> str:
    """README: global loss per round, secure vs plaintext FedAvg, and the largest parameter difference."""
    from fl_smpc import FLConfig, max_differences, plaintext_fedavg, train_federated

    def losses(history) -> str:
        return " | ".join(f"{loss:.4f}" for loss in [history.initial_loss] + [r.global_loss for r in history.rounds])

    def gaps(secure, plain) -> str:
        return " | ".join(["0"] + [short_e(gap) for gap in max_differences(secure, plain)])

    lines = ["| seed | start | round 1 | round 2 | round 3 | round 4 | round 5 |", "|---|---|---|---|---|---|---|"]
    for seed in (0, 7):
        config = FLConfig(seed=seed)
        secure, plain = train_federated(config), plaintext_fedavg(config)
        lines.append(f"| {seed}, secure (fl-smpc) | {losses(secure)} |")
        if seed == 0:
            lines.append(f"| {seed}, plaintext FedAvg | {losses(plain)} |")
        lines.append(f"| {seed}, max \\|Δ parameter\\| | {gaps(secure, plain)} |")
    return "\n".join(lines)


def sms_rounds() -> str:
    """docs/sms.md: the per-round table of the IID run with seed 0 (some rounds) and the comparison."""
    lines = cli_output(["--dataset", "sms", "--seed", "0"]).splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("round "))
    rows = [line for line in lines[header + 1 :] if line.split() and line.split()[0].isdigit()]
    kept = [row for row in rows if int(row.split()[0]) in SMS_ROUNDS]
    summary = lines[lines.index("") + 1 : lines.index("") + 5]
    return "\n".join(["```text", lines[header], *kept, "", *summary, "```"])


@functools.lru_cache(maxsize=None)
def boston(precision: int, epochs: int = BOSTON_EPOCHS) -> dict:
    """examples/boston_housing.py's run (secure and plaintext), seed 0."""
    import runpy

    example = runpy.run_path(str(ROOT / "examples" / "boston_housing.py"))  # its functions, not its main()
    return example["run"](epochs=epochs, seed=0, precision=precision)


def boston_api(epochs: int = BOSTON_EPOCHS) -> str:
    """docs/api.md: test and train MSE per epoch, secure at precision 3 and 6 against plaintext."""
    p3, p6 = boston(3, epochs), boston(6, epochs)
    lines = [
        "| epoch | test MSE, secure (p = 3) | test MSE, plaintext | test MSE, secure (p = 6) "
        "| train MSE, secure (p = 3) | train MSE, plaintext |",
        "|---|---|---|---|---|---|",
    ]
    for a, b in zip(p3["rows"], p6["rows"]):
        lines.append(
            f"| {a['epoch']} | {a['secure_test_mse']:.3f} | {a['plain_test_mse']:.3f} | {b['secure_test_mse']:.3f} "
            f"| {a['secure_train_mse']:.3f} | {a['plain_train_mse']:.3f} |"
        )
    lines += [
        "",
        f"Largest parameter difference from plaintext after {p3['config'].rounds} rounds: "
        f"{short_e(p3['max_param_diff'])} at precision 3, {short_e(p6['max_param_diff'])} at precision 6.",
    ]
    return "\n".join(lines)


def boston_readme(epochs: int = BOSTON_EPOCHS) -> str:
    """README: test MSE at some epochs, secure (precision 3) and plaintext; the truncation row is historical."""
    result = boston(3, epochs)
    rows, gap = result["rows"], result["max_param_diff"]
    shown = [e for e in README_EPOCHS if e <= epochs]

    def cells(key: str) -> str:
        values = [f"{rows[e][key]:.2f}" for e in shown]
        values[-1] = f"**{values[-1]}**" if shown[-1] == BOSTON_EPOCHS else values[-1]
        return " | ".join(values)

    return "\n".join(
        [
            "| epoch | " + " | ".join(str(e) for e in shown) + " |",
            "|---|" + "---|" * len(shown),
            f"| secure, precision 3 (round to nearest) | {cells('secure_test_mse')} |",
            f"| plaintext FedAvg | {cells('plain_test_mse')} |",
            TRUNCATION_ROW,
            "",
            f"Largest parameter difference after {result['config'].rounds} rounds: {short_e(gap)} "
            f"({gap / 1e-3:.1f} quanta).",
        ]
    )


def dp_table() -> str:
    """README and docs/privacy.md: SMS spam F1 against epsilon, from the measured docs/data/dp_sms.csv."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import dp_sms

    return dp_sms.table()


FIGURES: Dict[str, Tuple[Path, Callable[[], str]]] = {
    "sample-output": (README, sample_output),
    "toy-results": (README, toy_results),
    "boston-readme": (README, boston_readme),
    "boston-api": (API, boston_api),
    "sms-rounds": (SMS, sms_rounds),
    "dp-readme": (README, dp_table),
    "dp-privacy": (PRIVACY, dp_table),
}


def block_pattern(name: str) -> "re.Pattern[str]":
    return re.compile(rf"(<!-- figure {re.escape(name)} -->\n)(.*?)(\n<!-- /figure -->)", re.S)


def shown(name: str) -> str:
    """The figure as the doc shows it now (between its markers)."""
    path = FIGURES[name][0]
    match = block_pattern(name).search(path.read_text(encoding="utf-8"))
    if match is None:
        raise LookupError(f"{path.name}: no <!-- figure {name} --> ... <!-- /figure --> block")
    return match.group(2)


def write(name: str, figure: str) -> None:
    path = FIGURES[name][0]
    text = path.read_text(encoding="utf-8")
    shown(name)  # the markers must be there
    path.write_text(block_pattern(name).sub(lambda m: m.group(1) + figure + m.group(3), text), encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"figures: {', '.join(FIGURES)} (default: all)")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if a figure differs")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(FIGURES))
    if unknown:
        parser.error(f"unknown figures {unknown}; known: {', '.join(FIGURES)}")
    status = 0
    for name in args.names or list(FIGURES):
        figure = FIGURES[name][1]()
        if figure == shown(name):
            print(f"{name}: up to date")
        elif args.check:
            print(f"{name}: differs from a fresh run; `make figures` rewrites it", file=sys.stderr)
            status = 1
        else:
            write(name, figure)
            print(f"{name}: rewritten in {FIGURES[name][0].relative_to(ROOT)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
