"""landscape: why BN helps, after Santurkar, Tsipras, Ilyas and Madry, "How
Does Batch Normalization Help Optimization?" (NeurIPS 2018), section 3.1 and
Figure 4. Every few training steps, at the weights theta and a training
batch's gradient g, the loss and the gradient are measured a few steps
along -g:

    loss range                  max - min over eta of L(theta - eta g)
    gradient predictiveness     ||grad L(theta - eta g) - g||, its largest over eta
    effective beta-smoothness   max over eta of ||grad L(theta - eta g) - g|| / ||eta g||

A smoother landscape changes less along the gradient: smaller numbers.
lenet against lenet_fc_bn2, same optimizer and rate, over seeds."""

import functools

import numpy as np
import tensorflow as tf

import utils
import visualizations
from harness.callbacks import restored_afterwards
from harness.flags import LIMITS, int_up_to
from study.common import study_dir, write_rows, write_summary
from study.grid import Line, add_seed_count, plan, train
from study.intervals import (
    FEWEST_SEEDS_TO_COMPARE,
    band_curves,
    difference_words,
    paired_difference,
    spread_text,
    summary,
)

ABOUT = "Why BN helps (Santurkar et al., 2018, Fig. 4): loss range, gradient predictiveness, beta-smoothness."
# The step sizes probed: plain SGD's steps at the rates where BN-LeNet trains
# (studies.py lr: 0.1 to 1), so "a step along the gradient" is one a
# training could take; the same for both networks, whatever trains them.
ETAS = (0.05, 0.1, 0.2, 0.4)
MEASURES = ("loss_range", "gradient_change", "beta")
PANELS = [  # the paper's Figure 4 (a), (b), (c)
    ("loss_range", "(a) loss landscape: range of L(theta - eta g)", "max - min over eta"),
    ("gradient_change", "(b) gradient predictiveness", "max over eta of ||grad L(theta - eta g) - g||"),
    ("beta", "(c) effective beta-smoothness", "max over eta of ||grad change|| / ||eta g||"),
]


def probe_along_gradient(loss_and_gradient, theta, etas=ETAS):
    """The paper's three measures at `theta` (a flat vector), where
    `loss_and_gradient(theta)` gives the loss and its gradient (flat)."""
    loss, g = loss_and_gradient(theta)
    g_norm = float(np.linalg.norm(g))
    losses, changes = [], []
    for eta in etas:
        loss_there, g_there = loss_and_gradient(theta - eta * g)
        losses.append(loss_there)
        changes.append(float(np.linalg.norm(g_there - g)))
    return {
        "loss": loss,
        "gradient_norm": g_norm,
        "loss_range": max(losses) - min(losses),
        "gradient_change": max(changes),
        "beta": max(change / (eta * g_norm) for eta, change in zip(etas, changes)) if g_norm else 0.0,
    }


class BatchLoss:
    """L and its gradient over a Keras model's trainable weights, set from a
    flat vector, on one batch in training mode (BN with the batch's
    statistics, as a training step sees it): the `loss_and_gradient` of
    probe_along_gradient. It sets the model's weights; the caller restores them."""

    def __init__(self, model):
        self.model, self.variables = model, model.trainable_variables
        self.shapes = [tuple(variable.shape) for variable in self.variables]
        self.compiled = tf.function(self.loss_and_gradients)  # traced once per model, not once per probe
        self.images = self.labels = None

    def loss_and_gradients(self, parts, images, labels):
        for variable, part in zip(self.variables, parts):
            variable.assign(part)
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(images, training=True), tf.float32)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        return loss, tape.gradient(loss, self.variables)

    def weights(self):
        return np.concatenate([np.asarray(variable.numpy(), np.float64).ravel() for variable in self.variables])

    def __call__(self, theta):
        pieces = np.split(theta, np.cumsum([int(np.prod(shape)) for shape in self.shapes])[:-1])
        parts = [
            tf.constant(piece.reshape(shape), v.dtype) for piece, shape, v in zip(pieces, self.shapes, self.variables)
        ]
        loss, gradients = self.compiled(parts, self.images, self.labels)
        return float(loss), np.concatenate([np.asarray(gradient, np.float64).ravel() for gradient in gradients])


class LandscapeProbe(tf.keras.callbacks.Callback):
    """The probe every `every` training steps (and before the first), on a
    fresh training batch each time; the run's weights, BN's windows and the
    optimizer left exactly as they were."""

    every_step = True  # one step per call into TensorFlow (models_handling.fit)

    def __init__(self, train_images, train_labels, batch_size, every, seed):
        super().__init__()
        self.images, self.labels, self.batch_size, self.every = train_images, train_labels, batch_size, every
        self.random, self.step, self.curve = np.random.default_rng([seed, 7]), 0, []

    def probe(self):
        chosen = self.random.choice(len(self.images), self.batch_size, replace=False)
        self.loss.images, self.loss.labels = tf.constant(self.images[chosen]), tf.constant(self.labels[chosen])
        with restored_afterwards(self.model):
            self.curve.append({"step": self.step, **probe_along_gradient(self.loss, self.loss.weights())})

    def on_train_begin(self, logs=None):
        self.loss = BatchLoss(self.model)
        self.probe()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            self.probe()

    def report(self):
        return self.curve


def make_probe(splits, config, every):
    return LandscapeProbe(splits.x_train, splits.y_train, config.batch_size, every, config.seed)


def add_arguments(parser, flag):
    flag(
        parser,
        "learning_rate",
        "--rates",
        nargs="+",
        default=[0.001, 0.01, 0.05],
        help="the learning rates of --optimizer, each a training of both networks per seed (Adam: both train at "
        "0.001 and 0.01; lenet stays at chance at 0.05)",
    )
    flag(parser, "optimizer")
    parser.add_argument(
        "--every",
        type=int_up_to(LIMITS["steps"]),
        default=10,
        help="probe every this many training steps (and before the first)",
    )
    add_seed_count(parser, FEWEST_SEEDS_TO_COMPARE)


def run(config, args):
    lines, seeds = [Line("lenet"), Line("lenet_fc_bn2")], list(range(args.seeds))
    probe = functools.partial(make_probe, every=args.every)
    cells = plan(config, lines, [{"learning_rate": rate} for rate in args.rates], seeds, callback=probe)
    folder = study_dir(config, "landscape")

    def row_of(cell, done):
        result = done.result
        return {
            "model": cell.line.name,
            "learning_rate": cell.point["learning_rate"],
            "seed": cell.seed,
            "test_accuracy": result.test_accuracy,
            "diverged": result.diverged is not None,
        }

    rows, finished = train(config, cells, utils.load(config), folder / "trainings.csv", row_of)
    # Each training's probes, by (network, rate, seed).
    reports = {
        (cell.line.name, cell.point["learning_rate"], cell.seed): done.report for cell, done in zip(cells, finished)
    }
    write_rows(
        folder / "landscape.csv",
        [
            {"model": name, "learning_rate": rate, "seed": seed, **point}
            for (name, rate, seed), report in reports.items()
            for point in report
        ],
    )
    result = {"optimizer": config.optimizer, "etas": list(ETAS), "every": args.every, "seeds": seeds}
    result.update(epochs=config.epochs, rates={})
    for rate in args.rates:
        result["rates"][str(rate)] = part = rate_summary(rate, lines, seeds, reports, rows)
        print(f"\n{config.optimizer} at {rate:g}: each seed's median over training; mean over seeds (95 % interval)")
        for measure in MEASURES:
            cells_text = [spread_text(part["per_seed_median"][line.name][measure]) for line in lines]
            print(f"  {measure:<16}" + "  ".join(f"{line.name} {text:<36}" for line, text in zip(lines, cells_text)))
            print(f"  {'':<16}lenet - lenet_fc_bn2: {difference_words(part['lenet_minus_lenet_fc_bn2'][measure])}")
        print(
            "  test accuracy   "
            + "  ".join(f"{line.name} {spread_text(part['test_accuracy'][line.name])}" for line in lines)
        )
        plot_rate(reports, rate, lines, seeds, folder, f"{config.optimizer} at {rate:g}")
    write_summary(folder, result)
    return result


def plot_rate(reports, rate, lines, seeds, folder, setting):
    """Figure 4's three panels at one rate. The measures are positive and
    span decades, so each band is the 95 % interval of the mean of their
    logarithms over the seeds (a geometric mean and its interval), drawn on
    log axes; an arithmetic interval of three seeds reaches below zero."""

    def log_curve(name, seed):
        mine = reports[name, rate, seed]
        return {"step": [p["step"] for p in mine], **{m: [np.log10(max(p[m], 1e-12)) for p in mine] for m in MEASURES}}

    banded = band_curves({line.name: [log_curve(line.name, seed) for seed in seeds] for line in lines}, MEASURES)
    for curve in banded.values():
        for measure in MEASURES:
            curve[measure] = tuple([10.0**value for value in part] for part in curve[measure])
    visualizations.plot_panels(
        banded,
        PANELS,
        folder / f"landscape_{rate:g}.png",
        f"{setting}, {len(seeds)} seeds; line: geometric mean, band: its 95 % interval",
        log_scale=MEASURES,
    )


def rate_summary(rate, lines, seeds, reports, rows):
    """At one rate: each network's median of each measure over its probes,
    per seed, their mean with its interval, and lenet minus lenet_fc_bn2
    paired by seed."""
    medians = {
        line.name: {
            measure: [float(np.median([p[measure] for p in reports[line.name, rate, seed]])) for seed in seeds]
            for measure in MEASURES
        }
        for line in lines
    }
    accuracy = {
        line.name: [r["test_accuracy"] for r in rows if (r["model"], r["learning_rate"]) == (line.name, rate)]
        for line in lines
    }
    return {
        "per_seed_median": medians,
        "median_over_training": {name: {m: summary(v) for m, v in per.items()} for name, per in medians.items()},
        "lenet_minus_lenet_fc_bn2": {
            m: paired_difference(medians["lenet"][m], medians["lenet_fc_bn2"][m]) for m in MEASURES
        },
        "test_accuracy": accuracy,
    }
