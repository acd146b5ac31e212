"""A picture of training: global and per-owner losses per round (and test F1 when the run has it; with
differential privacy, each owner's epsilon spent per round).

Uses matplotlib's object API with the Agg canvas, never ``pyplot``: no GUI backend is selected,
no global figure registry fills up, and the module works the same in a script, a test or a notebook.
matplotlib is imported inside the functions so ``import fl_smpc`` stays light.
"""

import math
from pathlib import Path
from typing import Optional

from .errors import DataError


def settings_title(config) -> str:
    """One line naming the settings that produced the run, so a saved picture explains itself."""
    return (
        f"{len(config.workers)} owners ({', '.join(config.workers)}), {config.rounds} rounds x "
        f"{config.local_steps} local steps, lr {config.lr:g}, precision {config.precision_fractional}, "
        f"seed {config.seed}"
    )


def metric_series(history, metric: str):
    """(rounds, values) of one metric, starting at round 0 when the initial model was evaluated."""
    points = [(0, history.initial_metrics[metric])] if metric in history.initial_metrics else []
    points += [(r.round, r.metrics[metric]) for r in history.rounds if metric in r.metrics]
    return [p[0] for p in points], [p[1] for p in points]


def epsilon_series(history, owner: str):
    """(rounds, epsilon spent) of one owner: 0 at round 0, then after each round it contributed to."""
    points = [(0, 0.0)] + [(r.round, r.epsilon[owner]) for r in history.rounds if owner in r.epsilon]
    return [p[0] for p in points], [p[1] for p in points]


def dp_title(config) -> str:
    """With differential privacy, the settings that set epsilon, for the picture's title."""
    return (
        f"DP {config.dp}: noise multiplier {config.dp_noise:g}, clip {config.dp_clip:g}, sampling rate "
        f"{config.dp_sampling:g}, delta {config.dp_delta:g}, budget epsilon {config.dp_epsilon:g}"
    )


def _finite(values) -> list:
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def plot_history(history, baseline: Optional[float] = None, metric: str = "f1", title: Optional[str] = None):
    """Return a matplotlib ``Figure`` of ``history``, one panel per thing the run recorded.

    Loss panel: the global model's loss on all owners' data (round 0 = the initial model) and each
    owner's local loss (its last local step of the round), or with owner-side training the owners'
    weighted mean local loss. When the rounds carry ``metric`` (e.g. the SMS run's test F1), a panel
    plots it per round, with ``baseline`` (e.g. the centralized model's score) as a horizontal line.
    With differential privacy, a panel plots each owner's epsilon spent against the round (it changes
    only in the rounds the owner contributes to: a step line), with the run's budget (``dp_epsilon``)
    dashed; the loss panel is left out when no loss was released (DP: the owners evaluate nothing).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history.rounds:
        raise DataError("history has no completed rounds: nothing to plot")
    config = history.config
    rounds = [r.round for r in history.rounds]
    xs, ys = metric_series(history, metric)
    losses = [
        (
            "global model, all owners' data",
            [0] + rounds,
            [history.initial_loss] + [r.global_loss for r in history.rounds],
        )
    ]
    for name in config.workers:
        owner_losses = [r.worker_losses.get(name, math.nan) for r in history.rounds]
        if _finite(owner_losses) or (config.dp is None and all(r.local_loss is None for r in history.rounds)):
            losses.append((f"{name}: local loss (last local step)", rounds, owner_losses))
    if any(r.local_loss is not None for r in history.rounds):
        mean = [math.nan if r.local_loss is None else r.local_loss for r in history.rounds]
        losses.append(("owners' weighted mean local loss (last local step)", rounds, mean))
    spent = config.dp is not None and any(r.epsilon for r in history.rounds)
    with_loss = not spent or any(_finite(values) for _, _, values in losses)
    panels = (["loss"] if with_loss else []) + (["metric"] if xs else []) + (["epsilon"] if spent else [])
    fig = Figure(figsize=(2.0 + 4.5 * len(panels) if len(panels) > 1 else 7, 4.5))
    FigureCanvasAgg(fig)  # attaches itself: fig.savefig renders with Agg, no display needed
    axes = {panel: fig.add_subplot(1, len(panels), i + 1) for i, panel in enumerate(panels)}
    if "loss" in axes:
        loss_ax = axes["loss"]
        for i, (label, x, y) in enumerate(losses):
            style = (
                {"marker": "o", "linewidth": 2.5, "color": "black"} if i == 0 else {"marker": ".", "linestyle": "--"}
            )
            loss_ax.plot(x, y, label=label, **style)
        loss_ax.set(xlabel="round", ylabel="loss", title="Loss per round")
        shown = _finite(v for line in loss_ax.get_lines() for v in line.get_ydata())
        if shown and min(shown) > 0:
            loss_ax.set_yscale("log")  # owners' local losses are often orders of magnitude below the global one
            loss_ax.set_ylabel("loss (log scale)")
        loss_ax.legend(fontsize="small")
        loss_ax.grid(alpha=0.3)
    if "metric" in axes:
        metric_ax = axes["metric"]
        metric_ax.plot(xs, ys, marker="o", color="tab:green", label=f"federated model: test {metric}")
        if baseline is not None:
            metric_ax.axhline(
                baseline, color="tab:red", linestyle=":", label=f"centralized baseline ({metric} {baseline:.3f})"
            )
        metric_ax.set(xlabel="round", ylabel=f"test {metric}", title=f"Test {metric} per round")
        metric_ax.legend(fontsize="small")
        metric_ax.grid(alpha=0.3)
    if "epsilon" in axes:
        eps_ax = axes["epsilon"]
        sizes = [9.0 - 6.0 * i / max(len(config.workers) - 1, 1) for i in range(len(config.workers))]
        for name, size in zip(config.workers, sizes):  # equal settings give equal curves: the markers shrink
            eps_ax.plot(
                *epsilon_series(history, name),
                marker="o",
                markersize=size,
                drawstyle="steps-post",
                label=f"{name}: epsilon spent",
            )
        eps_ax.axhline(
            config.dp_epsilon, color="tab:red", linestyle="--", label=f"budget (epsilon {config.dp_epsilon:g})"
        )
        eps_ax.set(xlabel="round", ylabel=f"epsilon spent (delta {config.dp_delta:g})", title="Privacy spent per round")
        eps_ax.set_ylim(bottom=0)
        eps_ax.legend(fontsize="small")
        eps_ax.grid(alpha=0.3)
    for ax in fig.axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    heading = "Federated learning with secure averaging\n" + settings_title(config)
    if config.dp is not None:
        heading += "\n" + dp_title(config)
    fig.suptitle(title or heading, fontsize="medium")
    fig.tight_layout(rect=(0, 0, 1, 0.9 if config.dp is not None else 0.93))
    return fig


def save_plot(history, path, baseline: Optional[float] = None, metric: str = "f1") -> Path:
    """Write :func:`plot_history` to ``path`` (format from the suffix, e.g. ``.png``), atomically; return the path."""
    from .history_io import write_atomically

    path, figure = Path(path), plot_history(history, baseline, metric)
    write_atomically(path, lambda tmp: figure.savefig(tmp, dpi=100), private=False)
    return path
