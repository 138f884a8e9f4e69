"""figure1: the BN paper's Figure 1, the input of one sigmoid during
training, without BN and with BN everywhere, over seeds; in the paper's own
setup (a 3 x 100 sigmoid MLP, batch 60, 50,000 steps of SGD) or on LeNet-5."""

import functools
import math
from dataclasses import replace

import utils
import visualizations
from harness.flags import LIMITS, add_seeds, float_up_to, int_up_to
from study.common import first_step_at, run_trainings, study_dir, write_rows, write_summary
from study.intervals import band_curves, summary

ABOUT = "The BN paper's Figure 1: percentiles of one sigmoid's input during training, over seeds."
# Each setup: the two networks, the layer whose sigmoid input is followed (its
# width), and what differs from main.py's defaults.
SETUPS = {
    # Ioffe and Szegedy (2015), section 4.1: 3 fully connected hidden layers of
    # 100 sigmoid units, 60 examples a mini-batch, 50,000 steps; the last
    # hidden layer's sigmoid is followed. The optimizer is not named there:
    # plain SGD, at a rate where the network without BN learns.
    "paper": {
        "models": ("mlp", "mlp_bn"),
        "layer": "H3",
        "units": 100,
        "batch_size": 60,
        "steps": 50_000,
        "optimizer": "sgd",
        "learning_rate": 0.5,
        "every": 500,
    },
    # LeNet-5 as main.py trains it, F6's sigmoid followed.
    "lenet": {"models": ("lenet", "lenet_fc_bn2"), "layer": "F6", "units": 84, "every": 20},
}


def add_arguments(parser, flag):
    parser.add_argument(
        "--setup",
        choices=list(SETUPS),
        default="paper",
        help="paper: the BN paper's 3 x 100 sigmoid MLP, batch 60, 50,000 steps of SGD (--steps); "
        "lenet: LeNet-5 and lenet_fc_bn2 at main.py's settings (--epochs)",
    )
    add_seeds(parser, 3)
    parser.add_argument(
        "--steps",
        type=int_up_to(LIMITS["steps"]),
        default=None,
        help="paper setup: training steps (default 50,000, as the paper; whole epochs are trained)",
    )
    parser.add_argument(
        "--every",
        type=int_up_to(LIMITS["steps"]),
        default=None,
        help="measure every this many training steps (default: 500 paper, 20 lenet)",
    )
    parser.add_argument(
        "--unit",
        type=int_up_to(99, low=0),
        default=0,
        help="which unit of the followed layer (H3 of 100, F6 of 84) to follow",
    )
    parser.add_argument(
        "--probe_images",
        type=int_up_to(LIMITS["images"]),
        default=1000,
        help="how many (fixed) validation images the percentiles are taken over (the whole validation split at most)",
    )
    parser.add_argument(
        "--target",
        type=float_up_to(1.0),
        default=0.9,
        help="report the first step at which test accuracy reaches this (up to 1)",
    )
    flag(parser, "bn_statistics")


def make_probe(splits, config, probe_count, layer, unit, every):
    """A SigmoidInputProbe on a training's own splits (made where it trains)."""
    from study.probes import SigmoidInputProbe

    return SigmoidInputProbe(
        splits.x_val[:probe_count], splits.x_test, splits.y_test, layer, unit, every, splits.x_train, config
    )


def run(config, args):
    """Figure 1 in the chosen setup, without BN and with BN everywhere, for each seed."""
    import models_handling
    from harness.executor import Training
    from study.networks import build_network

    setup = SETUPS[args.setup]
    if args.unit >= setup["units"]:
        raise utils.UsageError(
            f"--unit {args.unit}: {setup['layer']} has {setup['units']} units (0 to {setup['units'] - 1})"
        )
    data = utils.load(config)
    train_images = len(utils.split_train_val(len(data.y_train), config.val_split, config.seed)[0])
    if args.setup == "paper":
        steps = args.steps or setup["steps"]
        config = replace(
            config,
            batch_size=setup["batch_size"],
            optimizer=setup["optimizer"],
            learning_rate=setup["learning_rate"],
            epochs=max(1, math.ceil(steps / math.ceil(train_images / setup["batch_size"]))),
        )
    every = args.every or setup["every"]
    probe = functools.partial(
        make_probe, probe_count=args.probe_images, layer=setup["layer"], unit=args.unit, every=every
    )
    build = functools.partial(models_handling.build_and_compile, build=build_network)
    plan = [
        Training(
            name,
            replace(config, seed=seed),
            label=f"seed {seed}: {name}",
            build=functools.partial(build, name),
            callback=probe,
        )
        for seed in args.seeds
        for name in setup["models"]
    ]
    done = run_trainings(config, plan, data)
    curves = {name: [d.report for t, d in zip(plan, done) if t.name == name] for name in setup["models"]}
    rows = [
        {"model": t.name, "seed": t.config.seed, **dict(zip(d.report, values))}
        for t, d in zip(plan, done)
        for values in zip(*d.report.values())
    ]

    folder = study_dir(config, "figure1")
    write_rows(folder / f"figure1_{args.setup}.csv", rows)
    steps_per_epoch = math.ceil(train_images / config.batch_size)
    title = (
        f"{args.setup} setup: {', '.join(setup['models'])}, batch {config.batch_size}, "
        f"{config.epochs * steps_per_epoch} steps of {config.optimizer}, {len(args.seeds)} seed(s) "
        "(band: 95 % interval of the mean)"
    )
    visualizations.plot_figure1(
        band_curves(curves, ("test_accuracy", "p15", "p50", "p85")),
        setup["layer"],
        folder / f"figure1_{args.setup}.png",
        title,
    )
    result = {
        "setup": args.setup,
        "layer": setup["layer"],
        "unit": args.unit,
        "seeds": args.seeds,
        "every": every,
        "batch_size": config.batch_size,
        "optimizer": config.optimizer,
        "learning_rate": config.learning_rate,
        "steps": config.epochs * steps_per_epoch,
        "bn_statistics": config.bn_statistics,
        "target": args.target,
        "test_accuracy": {t.name + f" seed {t.config.seed}": d.test_accuracy for t, d in zip(plan, done)},
    }
    for name, runs in curves.items():
        reached = [first_step_at(c, args.target, key="test_accuracy") for c in runs]
        spread = [c["p85"][-1] - c["p15"][-1] for c in runs]
        result[name] = {
            "final_test_accuracy": summary([c["test_accuracy"][-1] for c in runs]),
            "first_step_at_target": reached,
            "final_p85_minus_p15": summary(spread),
            "final_median": summary([c["p50"][-1] for c in runs]),
        }
        print(
            f"{name}: final test accuracy {result[name]['final_test_accuracy']['mean']:.4f}, first step at "
            f"{args.target}: {reached}, final 85th - 15th percentile of the {setup['layer']} input "
            f"{result[name]['final_p85_minus_p15']['mean']:.3f}"
        )
    write_summary(folder, result, f"summary_{args.setup}.json")
    return result
