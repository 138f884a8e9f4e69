"""seeds: the variants over several seeds, under each statistics rule: test
accuracy and steps to a target validation accuracy, each with its 95 %
interval, and the paired differences that say which gaps are real."""

import functools

import utils
import visualizations
from common import records
from common.config import BN_STATISTICS, VARIANTS
from harness.flags import LIMITS, add_models, add_seeds, float_up_to, int_up_to
from study.common import first_step_at, study_dir, write_rows, write_summary
from study.grid import Line, plan, train
from study.intervals import FEWEST_SEEDS_TO_COMPARE, difference_words, paired_difference, spread_text, summary

ABOUT = (
    "The variants over several seeds, under each statistics rule: test accuracy and steps to a target, "
    "with 95 % intervals and paired differences."
)


def add_arguments(parser, flag):
    parser.add_argument(
        "--rules",
        nargs="+",
        choices=BN_STATISTICS,
        default=list(BN_STATISTICS),
        metavar="RULE",
        help="the --bn_statistics rules to train under (precise, moving)",
    )
    add_seeds(parser, FEWEST_SEEDS_TO_COMPARE)
    flag(parser, "patience")
    add_models(parser, list(VARIANTS), default=VARIANTS)
    parser.add_argument(
        "--every",
        type=int_up_to(LIMITS["steps"]),
        default=10,
        help=f"validate every this many training steps, for steps to the target (1 to {LIMITS['steps']})",
    )
    parser.add_argument(
        "--target",
        type=float_up_to(1.0),
        default=None,
        help="the validation accuracy whose first step is reported; default: the lowest, over "
        "lenet's seeds, of the best validation accuracy lenet reached (each of its seeds reaches it)",
    )


def make_curve(splits, config, every):
    """A ValidationCurve on a training's own splits (made where it trains)."""
    from study.probes import ValidationCurve

    return ValidationCurve(splits.x_val, splits.y_val, splits.x_train, config, every)


def run(config, args):
    """The variants over several seeds (split, initial weights and
    shuffling), under each rule: every curve's mean with the interval of
    the mean as a band, the test accuracy and the steps to a target with
    their intervals, and the paired differences between neighbouring
    variants and between the rules."""
    if len(args.seeds) < FEWEST_SEEDS_TO_COMPARE:
        print(f"  {len(args.seeds)} seeds: intervals will be wide; comparisons want {FEWEST_SEEDS_TO_COMPARE} or more")
    data = utils.load(config)
    curve = functools.partial(make_curve, every=args.every)
    lines = [
        Line(name, {"bn_statistics": rule}, f"{rule} statistics: {name}") for rule in args.rules for name in args.models
    ]
    trainings = plan(config, lines, [{}], args.seeds, callback=curve)
    folder = study_dir(config, "seeds")

    def row_of(training, result):
        return {
            "model": training.name,
            "bn_statistics": training.config.bn_statistics,
            "seed": training.config.seed,
            "test_accuracy": result.test_accuracy,
            "test_loss": result.test_loss,
            "best_val_accuracy": max(result.report["val_accuracy"]),
            "epochs_trained": len(result.history["loss"]),
        }

    # No --resume: the plots want every training's curve and history.
    rows, finished = train(config, trainings, data, folder / "seeds.csv", row_of, resume=None)
    curves = [done.report for done in finished]
    write_rows(
        folder / "validation_curves.csv",
        [
            {
                "model": row["model"],
                "bn_statistics": row["bn_statistics"],
                "seed": row["seed"],
                "step": step,
                "val_accuracy": accuracy,
            }
            for row, curve_ in zip(rows, curves)
            for step, accuracy in zip(curve_["step"], curve_["val_accuracy"])
        ],
    )

    def per_seed(rule, name, values):
        return [value for row, value in zip(rows, values) if (row["model"], row["bn_statistics"]) == (name, rule)]

    summaries = {"seeds": args.seeds, "epochs": config.epochs, "validated_every": args.every, "rules": {}}
    for rule in args.rules:
        best = per_seed(rule, "lenet", [row["best_val_accuracy"] for row in rows])
        target = args.target or (min(best) if best else min(row["best_val_accuracy"] for row in rows))
        steps = {name: per_seed(rule, name, [first_step_at(c, target) for c in curves]) for name in args.models}
        accuracy = {name: per_seed(rule, name, [row["test_accuracy"] for row in rows]) for name in args.models}
        plot_rule(rule, args.models, list(zip(trainings, finished)), folder)
        summaries["rules"][rule] = rule_summary(rule, args.models, accuracy, steps, target)
        summaries["rules"][rule]["epochs_trained"] = {
            name: summary(per_seed(rule, name, [row["epochs_trained"] for row in rows])) for name in args.models
        }
    if set(args.rules) == set(BN_STATISTICS):
        summaries["precise_minus_moving"] = {
            name: paired_difference(
                summaries["rules"]["precise"]["test_accuracy"][name]["per_seed"],
                summaries["rules"]["moving"]["test_accuracy"][name]["per_seed"],
            )
            for name in args.models
            if name != "lenet"
        }
        print("\nprecise minus moving, test accuracy, paired by seed:")
        for name, difference in summaries["precise_minus_moving"].items():
            print(f"  {name:<14}{difference_words(difference)}")
    write_summary(folder, summaries)
    return summaries


def rule_summary(rule, models, accuracy, steps, target):
    """One rule's table (printed) and its summary.json part."""
    print(f"\n{rule} statistics, over seeds; steps to validation accuracy {target:.4f}")
    print(f"{'model':<14} {'test accuracy (95 % interval)':<44} steps to target (95 % interval)")
    part = {"target_val_accuracy": target, "test_accuracy": {}, "steps_to_target": {}, "differences": {}}
    for name in models:
        reached = [step for step in steps[name] if step is not None]
        part["test_accuracy"][name] = {**summary(accuracy[name]), "per_seed": accuracy[name]}
        part["steps_to_target"][name] = {
            **(summary(reached) if reached else {"n": 0}),
            "per_seed": steps[name],
            "reached": f"{len(reached)} of {len(steps[name])}",
        }
        steps_text = spread_text(reached, digits=0) if reached else "never reached"
        if reached and len(reached) < len(steps[name]):
            steps_text += f" ({len(reached)} of {len(steps[name])} seeds reached it)"
        print(f"{name:<14} {spread_text(accuracy[name]):<44} {steps_text}")
    for before, after in zip(models, models[1:]):
        key = f"{after} - {before}"
        part["differences"][key] = paired_difference(accuracy[after], accuracy[before])
        print(f"  test accuracy, {key}: {difference_words(part['differences'][key])}")
    return part


def plot_rule(rule, models, trainings, folder):
    """Each model's mean curve over the seeds, the 95 % interval of the mean
    as a band; with --patience, each epoch over the seeds that trained it."""
    histories = {
        name: [d.history for t, d in trainings if (t.name, t.config.bn_statistics) == (name, rule)] for name in models
    }
    means, bands = {}, {}
    for name, runs in histories.items():
        means[name], bands[name] = {}, {}
        for key in records.HISTORY_KEYS:
            epochs = max(len(run[key]) for run in runs)
            per_epoch = [summary([run[key][epoch] for run in runs if len(run[key]) > epoch]) for epoch in range(epochs)]
            means[name][key] = [s["mean"] for s in per_epoch]
            bands[name][key] = (
                [s["mean"] if s["low"] is None else s["low"] for s in per_epoch],
                [s["mean"] if s["high"] is None else s["high"] for s in per_epoch],
            )
    seeds = len(next(iter(histories.values())))
    for metric in ("accuracy", "loss"):
        visualizations.plot_comparison(
            means,
            metric,
            folder / f"seeds_{rule}_{metric}.png",
            bands,
            title=f"{rule} statistics: mean over {seeds} seeds, band = 95 % interval of the mean",
        )
