"""Utility of owner-side DP-FedSGD on the SMS spam split, against Opacus's anchor (issue 16): the study.

Runs :func:`fl_smpc.data_owner.privacy.noised_contribution` round after round on the project's SMS training
split (3,618 messages, 4,096 hashed features, ``nn.Linear(4096, 1)`` with mean BCE), decodes the sum with
:func:`~fl_smpc.data_owner.privacy.mean_gradient` and steps ``params -= lr * mean``, exactly as the model
owner does. No transport, no secure aggregation: the sum of the owners' int64 vectors is taken in plaintext
here, which is what the secure aggregate reveals.

* ``--owners 1``: centralized DP-SGD, one owner holding the whole split, all the noise on it (``local``);
* ``--owners 3``: the three iid owners of the federated runs, each Poisson-sampling its own messages and
  adding ``1/3`` of the noise variance (``distributed``) or all of it (``local``).

The noise multiplier is :func:`~fl_smpc.data_owner.privacy.calibrate_noise`'s (the rounds just fit into the
budget, delta 1e-5) and an :class:`~fl_smpc.data_owner.privacy.OwnerBudget` per owner checks every round.
F1 is the spam F1 on the held-out 904 messages after the last round (no model selection on the test set).
The settings are ``fl-smpc --dataset sms --dp``'s (``fl_smpc.config.SMS_DP_PROFILES``).

    make dp-study     # --study (27 DP runs + 3 without DP, ~15 min) then --figure
    make dp-figure    # --figure: docs/dp_f1_epsilon.png and the tables from docs/data/dp_sms.csv
    PYTHONPATH=. nice .venv/bin/python benchmarks/dp_sms.py --epsilon 3 --owners 3 --seeds 0   # one run
"""

import argparse
import csv
import io
import math
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from fl_smpc.config import SMS_DP_PROFILES, sms_dp_defaults
from fl_smpc.data_owner.privacy import DPSettings, OwnerBudget, calibrate_noise, mean_gradient, noised_contribution
from fl_smpc.history_io import write_atomically
from fl_smpc.sms.corpus import featurize, labels_tensor, load_packaged_corpus, spam_metrics
from fl_smpc.sms.experiment import mean_bce_with_logits, prepare_data

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "data" / "dp_sms.csv"  # measured by --study, committed
OPACUS_RESULTS = ROOT / "docs" / "data" / "opacus_sms.csv"  # measured by benchmarks/peers/opacus_sms.py
FIGURE = ROOT / "docs" / "dp_f1_epsilon.png"
DELTA = 1e-5
FEATURES = 4096
# issue 16's anchor as quoted (Opacus 1.6, same split and features, best of a small grid, seed 0)
OPACUS_ISSUE = {1.0: 0.594, 3.0: 0.757, 8.0: 0.837}
VARIANTS = ((3, "distributed"), (3, "local"), (1, "local"))  # (owners, noise placement)
SEEDS = (0, 1, 2)
FIELDS = (
    "owners",
    "mode",
    "epsilon",
    "q",
    "clip",
    "lr",
    "bias_lr",
    "rounds",
    "z",
    "epsilon_spent",
    "seed",
    "f1",
    "accuracy",
    "seconds",
)


class Data:
    def __init__(self, owners: int):
        prepared = prepare_data(load_packaged_corpus(), 3)
        parts = [prepared.train] if owners == 1 else prepared.owners
        self.parts = [(featurize(p.texts, FEATURES), labels_tensor(p)) for p in parts]
        self.test_x = featurize(prepared.test.texts, FEATURES)
        self.test_y = list(prepared.test.labels)

    def f1(self, model: nn.Module) -> Dict[str, float]:
        with torch.no_grad():
            predicted = (model(self.test_x).view(-1) > 0).long().tolist()
        return spam_metrics(self.test_y, predicted)


def run(data: Data, epsilon: float, mode: str, seed: int, precision: int = 5, **given) -> Dict[str, Any]:
    """One DP-FedSGD run with ``fl-smpc --dataset sms --dp MODE --dp-epsilon E``'s settings (``given`` overrides).

    The noise multiplier is calibrated to the rounds; each owner's budget checks every round.
    """
    settings_of_run = {**sms_dp_defaults(epsilon), **given}
    q, clip, lr = settings_of_run["dp_sampling"], settings_of_run["dp_clip"], settings_of_run["lr"]
    rounds, bias_lr = settings_of_run["rounds"], settings_of_run["dp_bias_lr"]
    z = calibrate_noise(epsilon, DELTA, q, rounds)
    shares = len(data.parts) if mode == "distributed" else 1
    settings = DPSettings.for_mode(mode, z, clip, q, epsilon, DELTA, max(shares, 2) if mode == "distributed" else 1)
    budgets = [OwnerBudget.for_settings(settings, precision, FEATURES + 2) for _ in data.parts]
    torch.manual_seed(seed)  # the initial model only: no DP draw comes from torch's generator
    model = nn.Linear(FEATURES, 1)
    started = time.perf_counter()
    rates = torch.full_like(parameters_to_vector(model.parameters()), lr)
    rates[-1] = lr * bias_lr  # nn.Linear's parameters: weight (4096 values), then bias
    for _ in range(rounds):
        for budget in budgets:
            budget.take_round()  # raises BudgetExhausted: calibration guarantees it does not
        total = sum(
            noised_contribution(model, mean_bce_with_logits, x, y, settings, precision, reduction="mean")
            for x, y in data.parts
        )
        step = torch.from_numpy(mean_gradient(total, settings, precision)).float()
        with torch.no_grad():
            vector_to_parameters(parameters_to_vector(model.parameters()) - rates * step, model.parameters())
    metrics = data.f1(model)
    return {
        "owners": len(data.parts), "mode": mode, "epsilon": epsilon, "q": q, "clip": clip, "lr": lr,
        "bias_lr": bias_lr, "rounds": rounds, "z": round(z, 4), "epsilon_spent": round(budgets[0].epsilon_spent, 4),
        "seed": seed, "f1": round(metrics["f1"], 4), "accuracy": round(metrics["accuracy"], 4),
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def run_without_dp(seed: int) -> Dict[str, Any]:
    """``fl-smpc --dataset sms --seed S`` (secure FedAvg, 3 owners, 20 rounds x 20 local steps): the non-private run."""
    from fl_smpc.config import SMS_DEFAULTS, FLConfig
    from fl_smpc.runner import run_sms_experiment

    started = time.perf_counter()
    config = FLConfig(
        seed=seed, rounds=SMS_DEFAULTS["rounds"], local_steps=SMS_DEFAULTS["local_steps"], lr=SMS_DEFAULTS["lr"]["bce"]
    )
    last = run_sms_experiment(config).history.rounds[-1].metrics
    return {
        "owners": 3, "mode": "none", "epsilon": math.inf, "rounds": config.rounds, "seed": seed,
        "f1": round(last["f1"], 4), "accuracy": round(last["accuracy"], 4),
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def run_cli(epsilon: float, seed: int) -> Dict[str, Any]:
    """``fl-smpc --dataset sms --dp distributed --dp-epsilon E --seed S --json``: the product, secure sums included."""
    import json

    from doc_figures import cli_output  # fl-smpc ARGV in this process, its stdout

    started = time.perf_counter()
    argv = ["--dataset", "sms", "--dp", "distributed", "--dp-epsilon", f"{epsilon:g}", "--seed", str(seed), "--json"]
    doc = json.loads(cli_output(argv))
    config, last = doc["config"], doc["rounds"][-1]
    return {
        "owners": 3, "mode": "cli", "epsilon": epsilon, "q": config["dp_sampling"], "clip": config["dp_clip"],
        "lr": config["lr"], "bias_lr": config["dp_bias_lr"], "rounds": len(doc["rounds"]),
        "z": round(config["dp_noise"], 4), "epsilon_spent": round(max(last["epsilon"].values()), 4), "seed": seed,
        "f1": round(last["metrics"]["f1"], 4), "accuracy": round(last["metrics"]["accuracy"], 4),
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def study(seeds: Sequence[int] = SEEDS, progress=None) -> List[Dict]:
    """Every variant at every profile's epsilon, and the run without DP, for each seed."""
    rows: List[Dict] = []
    for owners, mode in VARIANTS:
        data = Data(owners)
        for epsilon in SMS_DP_PROFILES:
            for seed in seeds:
                rows.append(run(data, epsilon, mode, seed))
                if progress:
                    progress(rows[-1])
    for epsilon in SMS_DP_PROFILES:
        for seed in seeds:
            rows.append(run_cli(epsilon, seed))
            if progress:
                progress(rows[-1])
    for seed in seeds:
        rows.append(run_without_dp(seed))
        if progress:
            progress(rows[-1])
    return rows


def write_results(rows: List[Dict], path: Path = RESULTS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS, restval="")
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(path, write, private=False)


def read_results(path: Path = RESULTS) -> List[Dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def opacus_measured(path: Path = OPACUS_RESULTS) -> Dict[float, Dict]:
    """Opacus measured here per epsilon (benchmarks/peers/opacus_sms.py): best-of-grid F1 at seed 0, and the
    3-seed mean and sd of that configuration; empty when the file is absent."""
    if not path.exists():
        return {}
    return {float(r["epsilon"]): {k: float(r[k]) for k in ("f1", "f1_mean", "f1_sd")} for r in read_results(path)}


def summary(rows: List[Dict]) -> Dict[tuple, List[float]]:
    """(owners, mode, epsilon) -> the F1 of each seed."""
    out: Dict[tuple, List[float]] = {}
    for r in rows:
        out.setdefault((int(r["owners"]), r["mode"], float(r["epsilon"])), []).append(float(r["f1"]))
    return out


def mean_sd(values: List[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def table(rows: Optional[List[Dict]] = None) -> str:
    """The markdown table of README and docs/privacy.md: F1 mean ± sd over the seeds, per epsilon and variant."""
    rows = read_results() if rows is None else rows
    f1, measured = summary(rows), opacus_measured()
    settings = {float(r["epsilon"]): r for r in rows if r["mode"] != "none"}

    def opacus(epsilon: float) -> str:
        m = measured.get(epsilon)
        return f"{m['f1']:.3f} / {m['f1_mean']:.3f} ± {m['f1_sd']:.3f}" if m else "–"

    out = io.StringIO()
    out.write(
        "| ε (fl-smpc's settings) | Opacus, issue 16 | Opacus here: best at seed 0 / its 3-seed mean "
        "| `fl-smpc --dp distributed` | 3 owners, distributed | 3 owners, local | one owner (centralized) |\n"
    )
    out.write("|---|---|---|---|---|---|---|\n")
    for epsilon in sorted(settings):
        r = settings[epsilon]
        cells = [mean_sd(f1[(owners, mode, epsilon)]) if (owners, mode, epsilon) in f1 else "–"
                 for owners, mode in ((3, "cli"), *VARIANTS)]  # fmt: skip
        out.write(
            f"| {epsilon:g} ({r['rounds']} rounds, z {float(r['z']):.2f}, lr {float(r['lr']):g}) | "
            f"{OPACUS_ISSUE[epsilon]:.3f} | {opacus(epsilon)} | {' | '.join(cells)} |\n"
        )
    plain = f1.get((3, "none", math.inf))
    if plain:
        no_dp = "∞ (no DP: `fl-smpc --dataset sms`, 20 rounds × 20 local steps)"
        out.write(
            f"| {no_dp} | 0.883 (mini-batch) | {opacus(math.inf)} (mini-batch) | {mean_sd(plain)} | – | – | – |\n"
        )
    both = [f1[(3, "cli", e)] + f1[(3, "distributed", e)] for e in sorted(settings) if (3, "cli", e) in f1]
    if both:
        six = " / ".join(f"{statistics.mean(v):.3f}" for v in both)
        out.write(f"| both distributed columns together, {len(both[0])} runs each | | | {six} | | | |\n")
    seeds = sorted({int(r["seed"]) for r in rows})
    out.write(
        f"\nF1 mean ± sd over seeds {', '.join(map(str, seeds))} (`docs/data/dp_sms.csv`, `make dp-study`); Opacus "
        "here: `benchmarks/peers/opacus_sms.py` (`docs/data/opacus_sms.csv`)."
    )
    return out.getvalue()


def figure(rows: Optional[List[Dict]] = None, path: Path = FIGURE) -> Path:
    """F1 against epsilon: each variant's mean (bars: min-max over the seeds), Opacus (the issue's figure and the
    measured 3-seed mean), and the run without DP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_results() if rows is None else rows
    f1 = summary(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labels = {(3, "cli"): "fl-smpc --dp distributed (3 owners)", (3, "distributed"): "3 owners, distributed noise",
              (3, "local"): "3 owners, local noise", (1, "local"): "one owner (centralized)"}  # fmt: skip
    for key, label in labels.items():
        eps = sorted(e for (o, m, e) in f1 if (o, m) == key)
        means = [statistics.mean(f1[(*key, e)]) for e in eps]
        low = [m - min(f1[(*key, e)]) for m, e in zip(means, eps)]
        high = [max(f1[(*key, e)]) - m for m, e in zip(means, eps)]
        ax.errorbar(eps, means, yerr=[low, high], marker="o", capsize=3, label=label)
    eps = sorted(OPACUS_ISSUE)
    ax.plot(eps, [OPACUS_ISSUE[e] for e in eps], "k--", marker="s", label="Opacus 1.6, issue 16's figure")
    measured = {e: m for e, m in opacus_measured().items() if math.isfinite(e)}
    if measured:
        eps_m = sorted(measured)
        ax.errorbar(eps_m, [measured[e]["f1_mean"] for e in eps_m], yerr=[measured[e]["f1_sd"] for e in eps_m],
                    color="k", linestyle=":", marker="^", capsize=3,
                    label="Opacus 1.6 here, 3-seed mean ± sd")  # fmt: skip
    plain = f1.get((3, "none", math.inf))
    if plain:
        ax.axhline(statistics.mean(plain), color="grey", linestyle=":", label="no DP (secure FedAvg)")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(eps)
    ax.set_xticklabels([f"{e:g}" for e in eps])
    ax.set_xlabel("ε (δ = 1e-5), per example of each owner")
    ax.set_ylabel("spam F1, 904 held-out messages")
    ax.set_title("SMS spam filter with owner-enforced DP-FedSGD")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", action="store_true", help=f"all runs, written to {RESULTS.relative_to(ROOT)}")
    parser.add_argument("--figure", action="store_true", help=f"{FIGURE.relative_to(ROOT)} from the results")
    parser.add_argument("--owners", type=int, choices=(1, 3), default=3)
    parser.add_argument("--mode", choices=("local", "distributed"), default="distributed")
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = parser.parse_args(argv)
    if args.study:
        rows = study(args.seeds, progress=lambda r: print(r, flush=True))
        write_results(rows)
        print(table(rows))
    if args.figure:
        print(f"wrote {figure()}")
    if not (args.study or args.figure):
        data = Data(args.owners)
        for seed in args.seeds:
            print(run(data, args.epsilon, args.mode, seed), flush=True)


if __name__ == "__main__":
    main()
