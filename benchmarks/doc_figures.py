"""The figures the docs show, made by the code: sample outputs and result tables between markers.

    .venv/bin/python benchmarks/doc_figures.py [--check] [NAME ...]      # make figures = all of them, written

In README.md and docs/*.md a figure stands between ``<!-- figure NAME -->`` and ``<!-- /figure -->``.
Without ``--check`` each named figure (default: all) is made afresh and written between its markers;
with ``--check`` nothing is written and the exit status is 1 if a figure differs. ``tests/test_doc_figures.py``
makes the fast figures afresh and compares them, and the first epoch of the slow Boston figures.

Figures: sample-output (``make run ARGS="--seed 0"``), toy-results (README's Results table), sms-rounds
(docs/sms.md's per-round output; its times are the machine's), boston-readme and boston-api (Part 10, 10
epochs at precision 3 and 6: about 80 s), dp-toy and dp-part10 (docs/privacy-runs.md: the toy run and Part 10
with differential privacy, about 20 s), dp-readme and dp-privacy (the DP table, from docs/data/dp_sms.csv,
which ``make dp-study`` measures).

The DP figures' losses come from noise drawn by a cryptographically secure generator, not from the seed: a
fresh run gives other digits. ``--check`` compares those cells only for being numbers (:data:`COMPARED`);
everything else in them (rounds, epsilon spent, the runs without DP, why the run stopped) exactly.
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


# --- differential privacy (docs/privacy-runs.md): the noise comes from a CSPRNG, not from the seed ---

PRIVACY_RUNS = ROOT / "docs" / "privacy-runs.md"
DP_TOY_ARGS = ["--dp", "distributed", "--dp-noise", "3", "--dp-sampling", "1", "--rounds", "10", "--seed", "0"]
PART10_DP = {"dp": "local", "dp_noise": 2.0, "dp_clip": 10.0, "dp_sampling": 0.2, "dp_epsilon": 3.0, "lr": 0.1}
PART10_DP_ROUNDS = 40
PART10_SHOWN = (0, 1, 5, 10, 15, 20, 25, 30, 35)
NOISY = "<noise>"  # what a DP loss cell is compared as: its digits are the noise's, different every run


def cli_config(argv: List[str]):
    """The FLConfig the command ``fl-smpc ARGV`` runs with (its own parser: the doc's command is the run)."""
    from fl_smpc.cli.train import build_parser, parse_args, spec_from_args

    return spec_from_args(parse_args(build_parser(), argv)).config


def epsilon_cell(result) -> str:
    """The owners' epsilon spent after a round: one number when all spent the same."""
    spent = sorted(set(result.epsilon.values()))
    if len(spent) == 1:
        return f"{spent[0]:.3f}"
    return ", ".join(f"{owner} {eps:.3f}" for owner, eps in result.epsilon.items())


def stop_line(history, asked: int) -> str:
    """Why a DP run has fewer rounds than asked (the owners' budgets), in one sentence."""
    if history.stopped and "privacy budget spent" in history.stopped:
        return (
            f"Asked for {asked} rounds; the owners declined round {len(history.rounds) + 1} (privacy budget "
            f"spent: it would take epsilon over {history.config.dp_epsilon:g}), so the run stopped cleanly "
            f"after {len(history.rounds)}."
        )
    return f"{len(history.rounds)} of {asked} rounds."


def dp_toy(rounds: int = 0) -> str:
    """docs/privacy-runs.md: the toy run with ``--dp distributed`` and with ``--dp local``, beside no DP.

    The loss is the model owner's look at the tutorial's six public messages after each round (the owners
    release none with DP). ``rounds``: fewer than the doc's (the test's quick run).
    """
    from dataclasses import replace

    import torch

    from fl_smpc import plaintext_fedavg, train_federated
    from fl_smpc.data import toy_dataset
    from fl_smpc.training import sum_squared_error

    x, y = toy_dataset()

    def toy_loss(model) -> dict:
        with torch.no_grad():
            loss = float(sum_squared_error(model(x), y))
        return {"toy_loss": loss}

    config = cli_config(DP_TOY_ARGS)
    asked = config.rounds
    config = replace(config, rounds=rounds or config.rounds)
    runs = {mode: train_federated(replace(config, dp=mode), evaluate=toy_loss) for mode in ("distributed", "local")}
    plain = plaintext_fedavg(replace(config, dp=None), evaluate=toy_loss)

    def loss(history, n: int) -> str:
        if n == 0:
            return f"{history.initial_metrics['toy_loss']:.3f}"
        return f"{history.rounds[n - 1].metrics['toy_loss']:.3f}" if n <= len(history.rounds) else "–"

    dist = runs["distributed"]
    lines = [
        "| round | epsilon spent (each owner) | loss, no DP | loss, `--dp distributed` | loss, `--dp local` |",
        "|---|---|---|---|---|",
    ]
    for n in range(0, len(plain.rounds) + 1):
        eps = "0" if n == 0 else epsilon_cell(dist.rounds[n - 1]) if n <= len(dist.rounds) else "–"
        lines.append(f"| {n} | {eps} | {loss(plain, n)} | {loss(dist, n)} | {loss(runs['local'], n)} |")
    return "\n".join(lines + ["", stop_line(dist, asked)])


def dp_part10(rounds: int = PART10_DP_ROUNDS) -> str:
    """docs/privacy-runs.md: PySyft's Part 10 (examples/boston_housing.py's data, model and task) with
    ``--dp local`` on each of the two owners, beside Part 10 without DP (plaintext FedAvg) after as many rounds."""
    history, plain = part10_dp_runs(rounds)
    shown = sorted({n for n in PART10_SHOWN if n <= len(history.rounds)} | {len(history.rounds)})

    def mse(h, n: int) -> float:
        return h.initial_metrics["test_mse"] if n == 0 else h.rounds[n - 1].metrics["test_mse"]

    lines = [
        "| round | epsilon spent (each owner) | test MSE, Part 10 without DP | test MSE, `--dp local` |",
        "|---|---|---|---|",
    ]
    for n in shown:
        eps = "0" if n == 0 else epsilon_cell(history.rounds[n - 1])
        lines.append(f"| {n} | {eps} | {mse(plain, n):.2f} | {mse(history, n):.2f} |")
    return "\n".join(lines + ["", stop_line(history, rounds)])


@functools.lru_cache(maxsize=None)
def part10_dp_runs(rounds: int):
    """(the DP run, Part 10 without DP in plain PyTorch for as many rounds), seed 0."""
    import runpy
    from dataclasses import replace

    import torch
    import torch.nn.functional as F

    from fl_smpc import plaintext_fedavg, split_dataset, train_federated

    example = runpy.run_path(str(ROOT / "examples" / "boston_housing.py"))
    (x_train, y_train), (x_test, y_test) = example["load_data"](0)
    parts = split_dataset(x_train, y_train, 2, binary_labels=False)
    part10 = example["part10_config"](1, 0, [len(x) for x, _ in parts])
    evaluate = example["test_mse"](x_test, y_test)
    torch.manual_seed(0)
    model = example["Net"]()
    plain = plaintext_fedavg(replace(part10, rounds=rounds), x_train, y_train, model, F.mse_loss, evaluate)
    private = replace(part10, rounds=rounds, training="owner", batch_size=None, **PART10_DP)  # Poisson samples
    history = train_federated(private, x_train, y_train, model=model, loss_fn=F.mse_loss, evaluate=evaluate)
    return history, plain


def mask_dp_losses(columns: Tuple[int, ...]) -> Callable[[str], str]:
    """The figure with the DP loss cells of table ``columns`` replaced by :data:`NOISY`, after checking each
    is a number (or "–": no such round); ValueError names a bad cell."""

    def mask(text: str) -> str:
        lines = text.splitlines()
        for i, line in enumerate(lines):
            cells = line.strip("|").split("|")
            if not line.startswith("|") or set(line) <= set("|-") or cells[0].strip() == "round":
                continue
            for c in columns:
                cell = cells[c].strip()
                if not re.fullmatch(r"-?\d+\.\d+|–", cell):
                    raise ValueError(f"row {line!r}: cell {c} is {cell!r}, not a number")
                cells[c] = f" {NOISY} "
            lines[i] = "|" + "|".join(cells) + "|"
        return "\n".join(lines)

    return mask


FIGURES: Dict[str, Tuple[Path, Callable[[], str]]] = {
    "sample-output": (README, sample_output),
    "toy-results": (README, toy_results),
    "boston-readme": (README, boston_readme),
    "boston-api": (API, boston_api),
    "sms-rounds": (SMS, sms_rounds),
    "dp-readme": (README, dp_table),
    "dp-privacy": (PRIVACY, dp_table),
    "dp-toy": (PRIVACY_RUNS, dp_toy),
    "dp-part10": (PRIVACY_RUNS, dp_part10),
}
# Figures whose DP losses vary run to run: compared (--check, the tests) with those cells masked.
COMPARED: Dict[str, Callable[[str], str]] = {"dp-toy": mask_dp_losses((3, 4)), "dp-part10": mask_dp_losses((3,))}


def comparable(name: str, figure: str) -> str:
    """What of a figure must be the same in every run: all of it, but the DP losses (their format checked)."""
    return COMPARED.get(name, lambda text: text)(figure)


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
        if figure == shown(name) or (args.check and comparable(name, figure) == comparable(name, shown(name))):
            print(f"{name}: up to date" + (" (but its DP losses, noise)" if name in COMPARED else ""))
        elif args.check:
            print(f"{name}: differs from a fresh run; `make figures` rewrites it", file=sys.stderr)
            status = 1
        else:
            write(name, figure)
            print(f"{name}: rewritten in {FIGURES[name][0].relative_to(ROOT)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
