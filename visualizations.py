"""Every plot, written as PNG with matplotlib's Agg backend (runs headless)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)

from utils import atomic_path  # noqa: E402

METRIC_LABELS = {"accuracy": "accuracy", "loss": "loss (cross-entropy)"}


def save_figure(figure, path):
    """Write the figure as a PNG without ever leaving a half-written file."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)


def _epochs(values):
    return range(1, len(values) + 1)


def plot_history(history, metric, title, path):
    """One model's training and validation `metric` against epoch."""
    figure, axes = plt.subplots(figsize=(6, 4))
    for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
        axes.plot(_epochs(history[key]), history[key], marker="o", label=label)
    axes.set(title=title, xlabel="epoch", ylabel=METRIC_LABELS[metric])
    axes.grid(alpha=0.3)
    axes.legend()
    save_figure(figure, path)


def plot_comparison(histories, metric, path):
    """Several models' `metric` against epoch: training on the left, validation
    on the right, one line per model."""
    figure, (train_axes, val_axes) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for name, history in histories.items():
        train_axes.plot(_epochs(history[metric]), history[metric], marker="o", label=name)
        val_axes.plot(_epochs(history[f"val_{metric}"]), history[f"val_{metric}"], marker="o", label=name)
    for axes, part in ((train_axes, "training"), (val_axes, "validation")):
        axes.set(title=f"{part} {metric}", xlabel="epoch")
        axes.grid(alpha=0.3)
    train_axes.set_ylabel(METRIC_LABELS[metric])
    val_axes.legend()
    save_figure(figure, path)
