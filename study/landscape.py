"""landscape: is the loss landscape smoother with BN? After Santurkar,
Tsipras, Ilyas and Madry, "How Does Batch Normalization Help Optimization?"
(NeurIPS 2018), section 3.1 and Figure 4.

Both networks train by plain SGD at one rate, in setups where both train.
Every few steps, at the weights theta and the gradient g of a fresh
training batch, the probe moves along the step SGD takes, eta = k * rate
for k in MULTIPLES (the training's own step, smaller and larger ones):

    loss range                  max - min over eta of L(theta - eta g)
    gradient predictiveness     max over eta of ||grad L(theta - eta g) - g||
    effective beta-smoothness   max over eta of ||grad L(theta - eta g) - g|| / ||eta g||

A smoother landscape changes less along the gradient: smaller numbers.
These are in the network's own coordinates, as the paper measures them.
A kernel that feeds BN can be scaled without changing the network, and the
curvature along the others goes as 1 / ||w||^2, so the raw numbers move with
the kernels' norms. The probe is therefore run twice: raw, and "scale-free"
after scaling each BN-fed output channel to unit norm (the same function;
the network without BN has no such kernels, its two probes are one). The
BN-fed kernels' norms are recorded at every probe. Networks are compared at
equal steps and at equal training loss, on the log scale (geometric means,
ratios paired by seed)."""

import functools
from dataclasses import replace

import numpy as np

import utils
import visualizations
from harness.flags import LIMITS, add_seeds, int_up_to
from study.common import study_dir, write_rows, write_summary
from study.grid import Line, plan, train
from study.intervals import (
    FEWEST_SEEDS_TO_COMPARE,
    geometric_summary,
    geometric_text,
    paired_ratio,
    ratio_words,
    summary,
)

ABOUT = (
    "Santurkar et al.'s Figure 4 under SGD: loss range, gradient predictiveness, beta-smoothness, raw and scale-free."
)
# Each setup: the two networks and the SGD training both of them learn under.
SETUPS = {
    # Ioffe and Szegedy (2015), section 4.1: the 3 x 100 sigmoid MLP, batch 60,
    # plain SGD at 0.5 (the figure1 study's paper setup; both learn there).
    "mlp": {"models": ("mlp", "mlp_bn"), "batch_size": 60, "learning_rate": 0.5, "init_std": None},
    # LeNet-5 under SGD: with Keras's Glorot initialisation lenet stays at
    # chance for 40 epochs at rates 0.01 to 2 (the lr study; docs/why_bn_helps.md);
    # with weights drawn from N(0, 0.3^2) it learns at 0.5.
    "lenet": {"models": ("lenet", "lenet_fc_bn2"), "batch_size": 64, "learning_rate": 0.5, "init_std": 0.3},
}
# The steps probed, as multiples of the training's own step (rate x g): 1/2 to
# 4, the range a secondary account of the paper's appendix gives for VGG.
MULTIPLES = (0.5, 1.0, 2.0, 4.0)
EPOCHS = 20  # this study's default --epochs: lenet under its SGD learns to 0.94 to 0.95 in 20 on the sample
MEASURES = ("loss_range", "gradient_change", "beta")
VIEWS = ("raw", "scale_free")
LOSS_LEVELS = (1.0, 0.5, 0.25)  # training losses at which the networks are compared
SMOOTHING = 5  # probes in the running median of the training loss
PANELS = [  # the paper's Figure 4 (a), (b), (c)
    ("loss_range", "(a) loss landscape: range of L(theta - eta g)", "max - min over eta"),
    ("gradient_change", "(b) gradient predictiveness", "max over eta of ||grad L(theta - eta g) - g||"),
    ("beta", "(c) effective beta-smoothness", "max over eta of ||grad change|| / ||eta g||"),
]


def probe_along_gradient(loss_and_gradient, theta, etas):
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


def probe_point(loss, etas):
    """Both probes at the network's weights on `loss`'s batch, and the
    BN-fed kernels' norms: one flat dict (raw_*, scale_free_*, norm_*)."""
    theta = loss.weights()
    raw = probe_along_gradient(loss, theta, etas)
    free = probe_along_gradient(loss, loss.unit_filters(theta), etas) if loss.kernel_slices else raw
    return {
        "loss": raw["loss"],
        **{f"raw_{key}": value for key, value in raw.items() if key != "loss"},
        **{f"scale_free_{key}": value for key, value in free.items() if key != "loss"},
        **{f"norm_{name}": value for name, value in loss.kernel_norms(theta).items()},
    }


def make_probe(splits, config, every):
    from study.probes import LandscapeProbe

    return LandscapeProbe(splits.x_train, splits.y_train, config.batch_size, config.learning_rate, every, config.seed)


def add_arguments(parser, flag):
    parser.add_argument(
        "--setups",
        nargs="+",
        choices=list(SETUPS),
        default=list(SETUPS),
        help="mlp: the BN paper's 3 x 100 sigmoid MLP against it with BN, batch 60, SGD at 0.5; lenet: lenet against "
        "lenet_fc_bn2, batch 64, SGD at 0.5, weights from N(0, 0.3^2)",
    )
    parser.add_argument(
        "--every",
        type=int_up_to(LIMITS["steps"]),
        default=20,
        help="probe every this many training steps (and before the first)",
    )
    add_seeds(parser, FEWEST_SEEDS_TO_COMPARE)


def setup_config(config, setup):
    return replace(
        config,
        optimizer="sgd",
        batch_size=setup["batch_size"],
        learning_rate=setup["learning_rate"],
        init_std=setup["init_std"],
    )


def run(config, args):
    import models_handling
    from study.networks import build_network

    seeds, folder = args.seeds, study_dir(config, "landscape")
    build = functools.partial(models_handling.build_and_compile, build=build_network)
    probe = functools.partial(make_probe, every=args.every)
    trainings, configs = [], {}
    for name in args.setups:
        setup = SETUPS[name]
        configs[name] = setup_config(config, setup)
        lines = [
            Line(model, label=f"{name}: {model}", build=functools.partial(build, model)) for model in setup["models"]
        ]
        trainings += plan(configs[name], lines, [{}], seeds, callback=probe)

    def row_of(training, result):
        return {
            "setup": training.line.split(":")[0],
            "model": training.name,
            "seed": training.config.seed,
            "test_accuracy": result.test_accuracy,
            "final_train_loss": result.history["loss"][-1],
            "diverged": result.diverged is not None,
        }

    rows, finished = train(config, trainings, utils.load(config), folder / "trainings.csv", row_of)
    reports = {(training.name, training.config.seed): done.report for training, done in zip(trainings, finished)}
    write_rows(
        folder / "landscape.csv",
        [{"model": name, "seed": seed, **point} for (name, seed), report in reports.items() for point in report],
    )
    result = {"multiples_of_the_step": list(MULTIPLES), "every": args.every, "seeds": seeds, "setups": {}}
    for name in args.setups:
        setup, chosen = SETUPS[name], configs[name]
        plain, bn = setup["models"]
        part = {
            "models": list(setup["models"]),
            "optimizer": "sgd",
            "learning_rate": chosen.learning_rate,
            "batch_size": chosen.batch_size,
            "init_std": chosen.init_std,
            "epochs": chosen.epochs,
            "steps": [k * chosen.learning_rate for k in MULTIPLES],
            **setup_summary(plain, bn, seeds, reports, rows),
        }
        result["setups"][name] = part
        print_setup(name, part, plain, bn)
    write_summary(folder, result)  # before the plots: a figure that fails to draw loses no number
    for name in args.setups:
        plain, bn = SETUPS[name]["models"]
        plot_setup(
            reports, plain, bn, seeds, folder / f"landscape_{name}.png", describe_setup(name, configs[name], seeds)
        )
    return result


def describe_setup(name, config, seeds):
    init = "Glorot" if config.init_std is None else f"N(0, {config.init_std:g}^2)"
    return (
        f"{name}: SGD at {config.learning_rate:g}, batch {config.batch_size}, {init} weights, {config.epochs} epochs, "
        f"{len(seeds)} seeds; steps {', '.join(f'{k:g}' for k in MULTIPLES)} x the training's own"
    )


def at_loss_level(report, level, key):
    """`key` at the first probe where the running median of the training
    loss (SMOOTHING probes) is at or below `level`: the median of `key` over
    those probes; None if the run never got there."""
    losses = [point["loss"] for point in report]
    for end in range(SMOOTHING, len(report) + 1):
        if np.median(losses[end - SMOOTHING : end]) <= level:
            return float(np.median([point[key] for point in report[end - SMOOTHING : end]]))
    return None


def compare(plain_values, bn_values):
    """Each network's geometric mean over seeds, and bn / plain paired by
    seed (seeds where either is missing left out, and counted)."""
    pairs = [(p, b) for p, b in zip(plain_values, bn_values) if p is not None and b is not None]
    return {
        "plain": geometric_summary([p for p, _ in pairs]) if pairs else {"n": 0},
        "bn": geometric_summary([b for _, b in pairs]) if pairs else {"n": 0},
        "bn_over_plain": paired_ratio([b for _, b in pairs], [p for p, _ in pairs]) if len(pairs) >= 2 else None,
        "seeds_compared": len(pairs),
    }


def setup_summary(plain, bn, seeds, reports, rows):
    """Test accuracy; each measure (raw and scale-free) compared over the
    whole training (each seed's median over its probes) and at each loss
    level; the BN-fed kernels' norms at the start and the end."""
    part = {"test_accuracy": {}, "diverged": {}, "over_training": {}, "at_training_loss": {}, "kernel_norms": {}}
    for model in (plain, bn):
        mine = [row for row in rows if row["model"] == model]
        part["test_accuracy"][model] = summary([row["test_accuracy"] for row in mine])
        part["diverged"][model] = sum(row["diverged"] for row in mine)
    for view in VIEWS:
        for measure in MEASURES:
            key = f"{view}_{measure}"
            medians = {
                model: [float(np.median([p[key] for p in reports[model, seed]])) for seed in seeds]
                for model in (plain, bn)
            }
            part["over_training"][key] = compare(medians[plain], medians[bn])
            for level in LOSS_LEVELS:
                values = {
                    model: [at_loss_level(reports[model, seed], level, key) for seed in seeds] for model in (plain, bn)
                }
                part["at_training_loss"].setdefault(str(level), {})[key] = compare(values[plain], values[bn])
    norms = [key for key in reports[bn, seeds[0]][0] if key.startswith("norm_")]
    for key in norms:
        part["kernel_norms"][key.removeprefix("norm_")] = {
            "start": geometric_summary([reports[bn, seed][0][key] for seed in seeds]),
            "end": geometric_summary([reports[bn, seed][-1][key] for seed in seeds]),
        }
    return part


def print_setup(name, part, plain, bn):
    accuracy = part["test_accuracy"]
    print(f"\n{name}: test accuracy {plain} {accuracy[plain]['mean']:.4f}, {bn} {accuracy[bn]['mean']:.4f}")
    print(f"  each seed's median over training; geometric mean over seeds; {bn} / {plain} paired by seed")
    for key, comparison in part["over_training"].items():
        print(
            f"  {key:<28}{plain} {geometric_text(comparison['plain'])}  {bn} {geometric_text(comparison['bn'])}  "
            f"ratio {ratio_words(comparison['bn_over_plain'])}"
        )
    for level, by_key in part["at_training_loss"].items():
        beta = by_key["raw_beta"], by_key["scale_free_beta"]
        print(
            f"  at training loss {level}: beta raw ratio {ratio_words(beta[0]['bn_over_plain'])}, "
            f"scale-free ratio {ratio_words(beta[1]['bn_over_plain'])} ({beta[0]['seeds_compared']} seeds)"
        )


def plot_setup(reports, plain, bn, seeds, path, title):
    """Figure 4's three panels, raw (top) and scale-free (bottom), against
    training step and against training loss; each seed a thin line, the
    geometric mean over seeds a thick one."""
    curves = {
        model: [
            {
                "step": [p["step"] for p in reports[model, seed]],
                "loss": running_median([p["loss"] for p in reports[model, seed]]),
                **{f"{view}_{m}": [p[f"{view}_{m}"] for p in reports[model, seed]] for view in VIEWS for m in MEASURES},
            }
            for seed in seeds
        ]
        for model in (plain, bn)
    }
    visualizations.plot_landscape(curves, PANELS, VIEWS, path, title)


def running_median(values):
    return [float(np.median(values[max(0, i - SMOOTHING + 1) : i + 1])) for i in range(len(values))]
