"""A picture of training: global and per-owner losses per round (and test F1 when the run has it).

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


def plot_history(history, baseline: Optional[float] = None, metric: str = "f1", title: Optional[str] = None):
    """Return a matplotlib ``Figure`` of ``history``.

    Left panel: the global model's loss on all owners' data (round 0 = the initial model) and each
    owner's local loss (its last local step of the round). When the rounds carry ``metric`` (e.g. the
    SMS run's test F1), a right panel plots it per round, with ``baseline`` (e.g. the centralized
    model's score) as a horizontal line.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history.rounds:
        raise DataError("history has no completed rounds: nothing to plot")
    xs, ys = metric_series(history, metric)
    fig = Figure(figsize=(11, 4.5) if xs else (7, 4.5))
    FigureCanvasAgg(fig)  # attaches itself: fig.savefig renders with Agg, no display needed
    loss_ax = fig.add_subplot(1, 2 if xs else 1, 1)
    rounds = [r.round for r in history.rounds]
    loss_ax.plot(
        [0] + rounds,
        [history.initial_loss] + [r.global_loss for r in history.rounds],
        marker="o",
        linewidth=2.5,
        color="black",
        label="global model, all owners' data",
    )
    for name in history.config.workers:
        loss_ax.plot(
            rounds,
            [r.worker_losses.get(name, math.nan) for r in history.rounds],
            marker=".",
            linestyle="--",
            label=f"{name}: local loss (last local step)",
        )
    loss_ax.set(xlabel="round", ylabel="loss", title="Loss per round")
    if min(min(line.get_ydata()) for line in loss_ax.get_lines()) > 0:
        loss_ax.set_yscale("log")  # owners' local losses are often orders of magnitude below the global one
        loss_ax.set_ylabel("loss (log scale)")
    loss_ax.legend(fontsize="small")
    loss_ax.grid(alpha=0.3)
    if xs:
        metric_ax = fig.add_subplot(1, 2, 2)
        metric_ax.plot(xs, ys, marker="o", color="tab:green", label=f"federated model: test {metric}")
        if baseline is not None:
            metric_ax.axhline(
                baseline, color="tab:red", linestyle=":", label=f"centralized baseline ({metric} {baseline:.3f})"
            )
        metric_ax.set(xlabel="round", ylabel=f"test {metric}", title=f"Test {metric} per round")
        metric_ax.legend(fontsize="small")
        metric_ax.grid(alpha=0.3)
    for ax in fig.axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(
        title or "Federated learning with secure averaging\n" + settings_title(history.config), fontsize="medium"
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def save_plot(history, path, baseline: Optional[float] = None, metric: str = "f1") -> Path:
    """Write :func:`plot_history` to ``path`` (format from the suffix, e.g. ``.png``), atomically; return the path."""
    from .history_io import write_atomically

    path, figure = Path(path), plot_history(history, baseline, metric)
    write_atomically(path, lambda tmp: figure.savefig(tmp, dpi=100), private=False)
    return path
