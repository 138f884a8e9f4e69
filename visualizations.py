"""Every plot, written as PNG with matplotlib's Agg backend (runs headless)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from common.files import atomic_path

METRIC_LABELS = {"accuracy": "accuracy", "loss": "loss (cross-entropy)"}


def save_figure(figure, path):
    """Write the figure as a PNG without ever leaving a half-written file."""
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)


def _epochs(values):
    return range(1, len(values) + 1)


def _whole_epochs(epochs, *all_axes):
    """Epoch ticks at whole numbers only: matplotlib's own put 0.96 ... 1.04
    under a 1-epoch run (and its integer locator gives up below two integers)."""
    for axes in all_axes:
        if epochs <= 20:
            axes.set_xticks(range(1, epochs + 1))
        else:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_history(history, metric, title, path):
    """One model's training and validation `metric` against epoch."""
    figure, axes = plt.subplots(figsize=(6, 4))
    for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
        axes.plot(_epochs(history[key]), history[key], marker="o", label=label)
    axes.set(title=title, xlabel="epoch", ylabel=METRIC_LABELS[metric])
    _whole_epochs(len(history[metric]), axes)
    axes.grid(alpha=0.3)
    axes.legend()
    save_figure(figure, path)


def plot_comparison(histories, metric, path, bands=None, title=None):
    """Several models' `metric` against epoch: training on the left, validation
    on the right, one line per model. With `bands` ({model: {key: (low,
    high)}}, per-epoch lists), each line gets its band (the seeds' interval),
    and `title` goes above both panels."""
    figure, (train_axes, val_axes) = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for name, history in histories.items():
        for axes, key in ((train_axes, metric), (val_axes, f"val_{metric}")):
            values = np.asarray(history[key])
            (line,) = axes.plot(_epochs(values), values, marker="o", label=name)
            if bands is not None:
                low, high = (np.asarray(bound, dtype=float) for bound in bands[name][key])
                axes.fill_between(_epochs(values), low, high, color=line.get_color(), alpha=0.2)
    if title:
        figure.suptitle(title)
    for axes, part in ((train_axes, "training"), (val_axes, "validation")):
        axes.set(title=f"{part} {metric}", xlabel="epoch")
        axes.grid(alpha=0.3)
    train_axes.set_ylabel(METRIC_LABELS[metric])
    _whole_epochs(max(len(history[metric]) for history in histories.values()), train_axes, val_axes)
    val_axes.legend()
    save_figure(figure, path)


# ---------------------------------------------------------------- studies


def plot_side_by_side(histories, path, title):
    """Two or more models' training (solid) and validation (dashed) accuracy
    and loss against epoch, on one figure, so that curves that coincide are
    seen to coincide."""
    figure, all_axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = ("-", "--")
    markers = ("o", "x", "s", "^")
    for axes, metric in zip(all_axes, ("accuracy", "loss")):
        for (name, history), marker in zip(histories.items(), markers):
            for key, part, style in ((metric, "train", styles[0]), (f"val_{metric}", "validation", styles[1])):
                axes.plot(_epochs(history[key]), history[key], style, marker=marker, label=f"{name}, {part}")
        axes.set(title=metric, xlabel="epoch", ylabel=METRIC_LABELS[metric])
        axes.grid(alpha=0.3)
    _whole_epochs(max(len(history["loss"]) for history in histories.values()), *all_axes)
    all_axes[0].legend(fontsize=8)
    figure.suptitle(title)
    save_figure(figure, path)


def plot_figure1(curves, layer, path, title, accuracy_label="test accuracy"):
    """The BN paper's Figure 1: (a) test accuracy against training step for
    each network, then per network the 15th, 50th and 85th percentiles of
    one `layer` sigmoid's input against training step, all on one y-scale
    so that the networks' spreads compare at a glance.

    `curves[network]` holds "step" and, under "test_accuracy", "p15",
    "p50", "p85", a (mean, low, high) triple of lists: the mean over seeds
    and its band."""
    figure, all_axes = plt.subplots(1, 1 + len(curves), figsize=(5 * (1 + len(curves)), 4.4))
    accuracy_axes, *percentile_axes = all_axes
    for axes in percentile_axes[1:]:
        axes.sharey(percentile_axes[0])

    def draw(axes, steps, series, label, bounds=(-np.inf, np.inf)):
        mean, low, high = series
        (line,) = axes.plot(steps, mean, label=label)
        axes.fill_between(steps, np.clip(low, *bounds), np.clip(high, *bounds), color=line.get_color(), alpha=0.2)

    for name, curve in curves.items():
        draw(accuracy_axes, curve["step"], curve["test_accuracy"], name, bounds=(0, 1))  # an accuracy's range
    accuracy_axes.set(title=f"(a) {accuracy_label}", xlabel="training step", ylabel=accuracy_label)
    accuracy_axes.legend()
    for axes, (name, curve), letter in zip(percentile_axes, curves.items(), "bcdef"):
        for key, label in (("p85", "85th percentile"), ("p50", "median"), ("p15", "15th percentile")):
            draw(axes, curve["step"], curve[key], label)
        axes.set(
            title=f"({letter}) {name}: input of one {layer} sigmoid",
            xlabel="training step",
            ylabel=f"{layer} sigmoid input",
        )
        axes.legend(fontsize=8)
    steps = next(iter(curves.values()))["step"]
    first = min((step for step in steps if step > 0), default=1)
    for axes in all_axes:
        axes.grid(alpha=0.3)
        if max(steps) / first > 50:  # a long run: its first thousand steps, where BN leads, would be a sliver
            axes.set_xscale("symlog", linthresh=first)
            axes.set_xlim(0, max(steps))
            axes.set_xlabel(f"training step (log scale past {first})")
    figure.suptitle(title)
    save_figure(figure, path)


def plot_learning_rates(rows, references, path):
    """Test accuracy against learning rate (log axis), one line per model (with
    BN, a dotted one for the `moving` statistics too); `references` ({label:
    accuracy}) drawn as dashed horizontal lines."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    models = list(dict.fromkeys(row["model"] for row in rows))
    for name in models:
        mine = sorted((row for row in rows if row["model"] == name), key=lambda row: row["learning_rate"])
        rates = [row["learning_rate"] for row in mine]
        # A diverged run has no accuracy (None): a gap in its line.
        accuracies = np.array([row["test_accuracy"] for row in mine], dtype=float)
        (line,) = axes.plot(rates, accuracies, marker="o", label=f"{name}, SGD")
        moving = [row["test_accuracy_moving"] for row in mine]
        if moving != [row["test_accuracy"] for row in mine]:
            axes.plot(
                rates,
                np.array(moving, dtype=float),
                ":",
                marker="s",
                color=line.get_color(),
                label=f"{name}, SGD, moving statistics (last training steps)",
            )
        for label, accuracy in references.items():
            if label.startswith(name + ","):
                axes.axhline(accuracy, linestyle="--", color=line.get_color(), alpha=0.7, label=label)
    axes.set_xscale("log")
    axes.set(
        title="test accuracy against learning rate", xlabel="learning rate (SGD)", ylabel="test accuracy", ylim=(0, 1)
    )
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    save_figure(figure, path)


MARKERS = ("o", "s", "^", "D", "v")
LINESTYLES = ("-", "--", ":", "-.")


def mean_and_bounds(cells, lowest, highest):
    """The means of `cells` (study.intervals summaries) and their intervals'
    bounds, clipped to the quantity's range [lowest, highest] (a few seeds'
    interval can reach past it); a cell without an interval (one seed) is
    bounded by its mean."""
    means = np.array([cell["mean"] for cell in cells])
    low = np.array([cell["low"] if cell["low"] is not None else cell["mean"] for cell in cells])
    high = np.array([cell["high"] if cell["high"] is not None else cell["mean"] for cell in cells])
    return means, np.clip(low, lowest, highest), np.clip(high, lowest, highest)


def offsets(count, factor=1.07):
    """Multiplicative x offsets that set `count` series a little apart on a
    log axis, so that equal values do not hide one line under another."""
    return [factor ** (index - (count - 1) / 2) for index in range(count)]


def plot_window_study(window_points, batch_points, path):
    """Left: test accuracy against window_size (log axis), one line per
    statistics rule ({rule: [(window_size, accuracy)]}). Right: test accuracy
    against inference batch size, one line per inference rule. Series that
    coincide are set a little apart along x, each with its own marker."""
    figure, (window_axes, batch_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    for axes, series in ((window_axes, window_points), (batch_axes, batch_points)):
        for (rule, points), shift, marker in zip(series.items(), offsets(len(series)), MARKERS):
            xs, ys = zip(*points)
            axes.plot([x * shift for x in xs], ys, marker=marker, label=rule, alpha=0.85)
        axes.set_xscale("log")
        axes.legend(fontsize=8)
        axes.grid(alpha=0.3, which="both")
    window_axes.set(
        title="inference statistics: window size", xlabel="window_size (training batches)", ylabel="test accuracy"
    )
    batch_axes.set(
        title="inference batch size (series set a little apart)",
        xlabel="images per predicted batch",
        ylabel="test accuracy",
        ylim=(0, 1),
    )
    save_figure(figure, path)


# A plot of one seed's test accuracies never zooms in further than this: two
# points closer than a seed-to-seed spread must not look like a collapse.
NARROWEST_ONE_SEED_SPAN = 0.02


def at_least_span(axes, values, span):
    """Widen the y-range, around the values' middle, to at least `span`."""
    low, high = min(values), max(values)
    if high - low < span:
        middle = (low + high) / 2
        axes.set_ylim(middle - span / 2, middle + span / 2)


def plot_replicas(points, global_batch, path):
    """Test accuracy against the number of replicas the global batch is split
    over (log axis; the batch each replica normalizes in the labels), one
    line per --bn_sync rule ({rule: [(replicas, accuracy)]}). One seed: the
    y-range spans at least NARROWEST_ONE_SEED_SPAN."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for rule, rule_points in points.items():
        axes.plot(*zip(*rule_points), marker="o", label=f"--bn_sync {rule}")
    replicas = sorted({count for rule_points in points.values() for count, _ in rule_points})
    axes.set_xscale("log", base=2)
    axes.set_xticks(replicas, [f"{count}\n({global_batch // count} per replica)" for count in replicas])
    axes.set(
        title=f"lenet_fc_bn2, global batch {global_batch} split over replicas (one seed)",
        xlabel="replicas",
        ylabel="test accuracy",
    )
    at_least_span(
        axes, [accuracy for rule_points in points.values() for _, accuracy in rule_points], NARROWEST_ONE_SEED_SPAN
    )
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    save_figure(figure, path)


def plot_grid(knob, values, cells, path, note):
    """Test accuracy against the knob's values, one series per model
    ({model: [a summary per value]}) with its 95 % interval: for numbers, a
    line and a band (a log axis past a factor of 20); for categories (or a
    few numbers that are not a scale), points with error bars set a little
    apart. A point where trainings diverged is marked with an x and their
    count (the grid counts each as accuracy 0)."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    numeric = all(isinstance(value, int | float) and not isinstance(value, bool) for value in values)
    logarithmic = numeric and min(values) > 0 and max(values) / min(values) > 20
    positions = values if numeric else list(range(len(values)))
    for index, (name, per_value) in enumerate(cells.items()):
        color = f"C{index}"
        shown = [(x, cell) for x, cell in zip(positions, per_value) if cell["n"]]
        xs = [x for x, _ in shown]
        means, low, high = mean_and_bounds([cell for _, cell in shown], 0, 1)  # an accuracy's range
        if not numeric:
            shift = (index - (len(cells) - 1) / 2) * 0.12
            xs = [x + shift for x in xs]
            axes.errorbar(xs, means, yerr=[means - low, high - means], fmt="o", capsize=4, color=color, label=name)
        elif shown:
            axes.plot(xs, means, marker="o", color=color, label=name)
            axes.fill_between(xs, low, high, color=color, alpha=0.2)
        for x, cell in zip(positions, per_value):
            if cell.get("diverged"):
                axes.plot([x], [0.0], "x", color=color, markersize=9)
                axes.annotate(
                    f"{cell['diverged']} diverged",
                    (x, 0.0),
                    textcoords="offset points",
                    xytext=(4, 6),
                    fontsize=7,
                    color=color,
                )
    if logarithmic:
        axes.set_xscale("log")
    if not numeric or (logarithmic and len(values) <= 8):
        axes.set_xticks(positions, [str(value) for value in values])
        axes.minorticks_off()  # the log axis's own labels would overprint the values
    elif logarithmic:  # more values than fit as labels: the log axis's own decades
        axes.minorticks_off()
    if not numeric:
        axes.set_xlim(-0.5, len(values) - 0.5)
    axes.set(title=f"test accuracy against {knob} ({note})", xlabel=knob, ylabel="test accuracy")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    save_figure(figure, path)


def common_length(series):
    """Per-seed lists cut to the shortest (a diverged seed stops early), as one array."""
    shortest = min(len(values) for values in series)
    return np.array([values[:shortest] for values in series], dtype=float)


def plot_landscape(curves, panels, views, path, title):
    """Santurkar et al.'s Figure 4 panels for two networks: one row per view
    (raw, scale-free) against training step, then the same against the
    training loss (its running median; falling from left to right). Each
    seed a thin line; against step, the geometric mean over seeds a thick
    one. `curves[network]` is a list, one dict per seed, of "step", "loss"
    and f"{view}_{key}" lists; `panels` a (key, panel title, y label) each."""
    figure, grid = plt.subplots(2 * len(views), len(panels), figsize=(5 * len(panels), 3.6 * 2 * len(views)))
    for row, view in enumerate(views):
        for column, (key, panel_title, ylabel) in enumerate(panels):
            by_step, by_loss = grid[row, column], grid[len(views) + row, column]
            for index, (name, runs) in enumerate(curves.items()):
                color = f"C{index}"
                series = [run[f"{view}_{key}"] for run in runs]
                for run, values in zip(runs, series):
                    by_step.plot(run["step"], values, color=color, alpha=0.25, linewidth=0.8)
                    by_loss.plot(run["loss"], values, color=color, alpha=0.5, linewidth=0.8)
                kept = common_length(series)  # a diverged seed stops early
                geometric = np.exp(np.mean(np.log(np.maximum(kept, 1e-30)), axis=0))
                by_step.plot(
                    runs[0]["step"][: kept.shape[1]],
                    geometric,
                    color=color,
                    linewidth=2,
                    label=f"{name} (geometric mean)",
                )
                by_loss.plot([], [], color=color, label=name)
            for axes, xlabel in ((by_step, "training step"), (by_loss, "training loss (running median)")):
                axes.set_yscale("log")
                axes.set(title=f"{panel_title}, {view.replace('_', '-')}", xlabel=xlabel, ylabel=ylabel)
                axes.grid(alpha=0.3, which="both")
                axes.legend(fontsize=7)
            by_loss.set_xscale("log")
            by_loss.invert_xaxis()
    figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path)


def plot_noisy_bn(curves, labels, result, layers, layer, path, title):
    """The noisy_bn study's figure: (a) training accuracy and (b) F6's
    relative move against step, each network's mean over seeds; (c) the l2
    and (d) the cosine of Definition 2.1 per layer, each network's median
    over training (geometric or arithmetic mean over seeds, 95 % interval);
    then one F6 unit's percentiles per network (Figure 2 of the paper)."""
    figure, grid = plt.subplots(2, 4, figsize=(21, 9))
    steps = [point["step"] for point in curves[labels[0]][0]]
    for index, label in enumerate(labels):
        color = f"C{index}"
        for axes, key in ((grid[0, 0], "train_accuracy"), (grid[0, 1], "relative_move")):
            values = common_length([[p[key] for p in curve[1:]] for curve in curves[label]])  # none at the first
            # Lines that coincide (BN and noisy BN train alike) stay visible by their dashes.
            axes.plot(
                steps[1 : 1 + values.shape[1]],
                values.mean(axis=0),
                color=color,
                label=label,
                linestyle=LINESTYLES[index % 4],
            )
        offset = (index - (len(labels) - 1) / 2) * 0.12  # side by side at each layer, none hidden
        for axes, measure in ((grid[0, 2], "l2"), (grid[0, 3], "cosine")):
            cells = [result["summary"][f"ics_{measure}_{name}"][label] for name in layers]
            means, low, high = mean_and_bounds(cells, *((-1, 1) if measure == "cosine" else (-np.inf, np.inf)))
            axes.errorbar(
                np.arange(len(layers)) + offset,
                means,
                yerr=[means - low, high - means],
                fmt="o",
                color=color,
                capsize=3,
                label=label,
            )
        percentiles = grid[1, index] if index < 4 else None
        if percentiles is not None:
            for key, name in (("p85", "85th percentile"), ("p50", "median"), ("p15", "15th percentile")):
                values = common_length([[p[key] for p in curve] for curve in curves[label]])
                percentiles.plot(steps[: values.shape[1]], values.mean(axis=0), label=name)
            percentiles.set(
                title=f"({'efgh'[index]}) {label}: one {layer} sigmoid's input",
                xlabel="training step",
                ylabel=f"{layer} sigmoid input (training mode)",
            )
            percentiles.legend(fontsize=7)
    grid[0, 0].set(title="(a) training accuracy since the last point", xlabel="training step", ylabel="accuracy")
    grid[0, 1].set(
        title=f"(b) {layer} inputs: median's move / spread",
        xlabel="training step",
        ylabel="mean over units of |move of median| / (p85 - p15)",
    )
    grid[0, 1].set_yscale("log")
    for axes, panel, measure, ylabel in (
        (grid[0, 2], "c", "l2", "||G - G'||"),
        (grid[0, 3], "d", "cosine", "cos(G, G')"),
    ):
        axes.set_xticks(range(len(layers)), layers)
        axes.set(title=f"({panel}) internal covariate shift, {measure}", xlabel="layer", ylabel=ylabel)
    grid[0, 2].set_yscale("log")
    for axes in grid.flat:
        axes.grid(alpha=0.3, which="both")
    grid[0, 0].legend(fontsize=7)
    grid[0, 2].legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path)
