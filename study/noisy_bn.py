"""noisy_bn: does BN help by reducing internal covariate shift? After
Santurkar, Tsipras, Ilyas and Madry (NeurIPS 2018), sections 2.1 and 2.2.

1. Noisy BN (section 2.1, Figure 2): lenet_fc_bn2 with noise after every
   BN layer, in training only. At every step each noise layer draws
   mu ~ U(-noise_mean, noise_mean) and sigma ~ U(1, noise_scale), then for
   every activation of every sample its own shift m ~ U(mu - 0.1, mu + 0.1)
   and scale s ~ N(sigma, 0.1^2): y becomes s * y + m. The distribution of
   what the next layer receives moves at every step, by design. A second
   kind ("channel") draws one shift and scale per channel and step, shared
   by every sample and position: a change that a BN right after it removes.
2. Internal covariate shift as the paper defines it (section 2.2,
   Definition 2.1, Figure 5): for each layer, its weights' gradient on a
   batch, before and after the layers below it take their SGD step on that
   batch (study/gradients.py), as an l2 difference and a cosine.

Every network trains by plain SGD (the landscape study's lenet setup, where
lenet learns too). Every few steps: the training accuracy since the last
point, the shift of Definition 2.1 on a fresh batch, and the F6 sigmoid
inputs on fixed training images in training mode (noise on): how far each
unit's median moved since the last point, relative to that unit's spread."""

import functools

import numpy as np

import utils
import visualizations
from harness.flags import LIMITS, add_seeds, float_up_to, int_up_to
from study.common import study_dir, write_rows, write_summary
from study.grid import Line, plan, train
from study.intervals import (
    FEWEST_SEEDS_TO_COMPARE,
    difference_words,
    geometric_summary,
    paired_difference,
    paired_ratio,
    ratio_words,
    spread_text,
    summary,
)
from study.landscape import SETUPS, setup_config

ABOUT = "Santurkar et al.'s noisy BN and their measure of internal covariate shift, against lenet and BN, under SGD."
EPOCHS = 20  # as the landscape study: lenet under this SGD learns to 0.94 to 0.95 in 20 epochs on the sample
SETUP = SETUPS["lenet"]  # SGD at 0.5, batch 64, weights from N(0, 0.3^2)
LAYER, UNIT, PROBE_IMAGES = "F6", 0, 256
LAYERS = ("C3", "C5", "F6", "output")  # C1 has no layer below it: its shift is 0 by definition


def relative_move(before, after):
    """How far each unit's median moved between two samples of its input
    ([images, units] each), over that unit's spread (85th - 15th
    percentile, after), averaged over the units."""
    p15, p50, p85 = np.percentile(after, [15, 50, 85], axis=0)
    moved = np.abs(p50 - np.median(before, axis=0))
    return float(np.mean(moved / np.maximum(p85 - p15, 1e-12)))


def make_probe(splits, config, every):
    from study.probes import ShiftProbe

    count = min(PROBE_IMAGES, len(splits.x_train))
    chosen = np.random.default_rng([config.seed, 11]).choice(len(splits.x_train), count, replace=False)
    return ShiftProbe(
        splits.x_train,
        splits.y_train,
        splits.x_train[chosen],
        config.batch_size,
        config.learning_rate,
        every,
        config.seed,
    )


def add_arguments(parser, flag):
    parser.add_argument(
        "--noise_mean",
        type=float_up_to(10.0),
        default=0.5,
        help="each step's mean shift mu drawn from U(-NOISE_MEAN, NOISE_MEAN)",
    )
    parser.add_argument(
        "--noise_scale",
        type=float_up_to(10.0),
        default=1.25,
        help="each step's mean scale sigma drawn from U(1, NOISE_SCALE)",
    )
    parser.add_argument(
        "--every", type=int_up_to(LIMITS["steps"]), default=20, help="a point every this many training steps"
    )
    add_seeds(parser, FEWEST_SEEDS_TO_COMPARE)


def run(config, args):
    import models_handling
    from study.networks import NOISE_KINDS, SPREAD, noisy_network

    if args.noise_scale < 1:
        raise utils.UsageError(
            f"--noise_scale {args.noise_scale:g}: the scale is drawn from U(1, NOISE_SCALE); give 1 or more"
        )
    config = setup_config(config, SETUP)
    lines = [Line("lenet"), Line("lenet_fc_bn2")]
    for kind, label in NOISE_KINDS.items():
        noisy = functools.partial(
            noisy_network, noise_mean=args.noise_mean, noise_scale=args.noise_scale, noise_kind=kind
        )
        build = functools.partial(models_handling.build_and_compile, "lenet_fc_bn2", build=noisy)
        lines.append(Line("lenet_fc_bn2", label=f"lenet_fc_bn2 {label}", build=build))
    seeds = args.seeds
    trainings = plan(config, lines, [{}], seeds, callback=functools.partial(make_probe, every=args.every))
    folder = study_dir(config, "noisy_bn")

    def row_of(training, result):
        return {
            "model": training.line,
            "seed": training.config.seed,
            "test_accuracy": result.test_accuracy,
            "final_train_accuracy": result.history["accuracy"][-1],
            "diverged": result.diverged is not None,
        }

    rows, finished = train(config, trainings, utils.load(config), folder / "trainings.csv", row_of)
    labels = [line.describe() for line in lines]
    curves = {
        label: [done.report for training, done in zip(trainings, finished) if training.line == label]
        for label in labels
    }
    write_rows(
        folder / "noisy_bn.csv",
        [
            {"model": label, "seed": seed, **point}
            for label in labels
            for seed, curve in zip(seeds, curves[label])
            for point in curve
        ],
    )
    result = {
        "optimizer": "sgd",
        "learning_rate": config.learning_rate,
        "batch_size": config.batch_size,
        "init_std": config.init_std,
        "epochs": config.epochs,
        "every": args.every,
        "noise_mean": args.noise_mean,
        "noise_scale": args.noise_scale,
        "noise_spread": SPREAD,
        "seeds": seeds,
        **study_summary(labels, curves, rows),
    }
    print_summary(result, labels)
    write_summary(folder, result)  # before the plot: a figure that fails to draw loses no number
    visualizations.plot_noisy_bn(
        curves, labels, result, LAYERS, LAYER, folder / "noisy_bn.png", describe(config, args, seeds)
    )
    return result


def describe(config, args, seeds):
    return (
        f"SGD at {config.learning_rate:g}, batch {config.batch_size}, N(0, {config.init_std:g}^2) weights, "
        f"{config.epochs} epochs, {len(seeds)} seeds; noise mu ~ U(-{args.noise_mean:g}, {args.noise_mean:g}), "
        f"sigma ~ U(1, {args.noise_scale:g}) per step"
    )


def study_summary(labels, curves, rows):
    """Per network: test and last-epoch training accuracy (arithmetic),
    each layer's shift (each seed's median over its probes; l2 and the
    relative one as geometric means, the cosine arithmetic), the F6 inputs'
    relative move; and each network against lenet, paired by seed."""
    per_seed = {
        "test_accuracy": {label: [r["test_accuracy"] for r in rows if r["model"] == label] for label in labels},
        "final_train_accuracy": {
            label: [r["final_train_accuracy"] for r in rows if r["model"] == label] for label in labels
        },
        "relative_move": {
            label: [float(np.median([p["relative_move"] for p in curve[1:]])) for curve in curves[label]]
            for label in labels
        },
    }
    for measure in ("l2", "cosine", "relative"):
        for layer in LAYERS:
            key = f"ics_{measure}_{layer}"
            per_seed[key] = {
                label: [float(np.median([p[key] for p in curve])) for curve in curves[label]] for label in labels
            }
    logarithmic = [key for key in per_seed if key.startswith(("ics_l2", "ics_relative")) or key == "relative_move"]
    result = {"per_seed": per_seed, "summary": {}, "against_lenet": {}}
    for key, by in per_seed.items():
        result["summary"][key] = {
            label: (geometric_summary if key in logarithmic else summary)(v) for label, v in by.items()
        }
        compare = paired_ratio if key in logarithmic else paired_difference
        result["against_lenet"][key] = {label: compare(by[label], by["lenet"]) for label in labels[1:]}
    result["diverged"] = {label: sum(r["diverged"] for r in rows if r["model"] == label) for label in labels}
    return result


def print_summary(result, labels):
    seeds = len(result["seeds"])
    print(f"\nover {seeds} seeds: each network's mean (95 % interval); against lenet paired by seed")
    for key in ("test_accuracy", "final_train_accuracy"):
        print(f"  {key}")
        for label in labels:
            print(f"    {label:<30}{spread_text(result['per_seed'][key][label])}")
            if label != "lenet":
                print(f"      minus lenet: {difference_words(result['against_lenet'][key][label])}")
    for key in ("relative_move", *(f"ics_{m}_{layer}" for m in ("l2", "cosine") for layer in LAYERS)):
        words = difference_words if "cosine" in key else ratio_words  # a cosine lies in [-1, 1]: its difference
        means = "  ".join(f"{label} {result['summary'][key][label]['mean']:.3g}" for label in labels)
        print(f"  {key}: {means}")
        for label in labels[1:]:
            print(f"    {label:<30}against lenet: {words(result['against_lenet'][key][label])}")
