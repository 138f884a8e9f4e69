"""grid: any knob of main.py over several values, for several models and
seeds: test accuracy against the knob's values, each with its 95 % interval
over the seeds, and the paired difference of each model from the first."""

import argparse
from dataclasses import replace

import utils
import visualizations
from harness.config import MODEL_NAMES, TRAINING_KEYS
from harness.executor import Training
from harness.flags import OneLineErrorParser
from models_handling import make_optimizer
from study.common import run_trainings, study_dir, write_rows, write_summary
from study.intervals import FEWEST_SEEDS_TO_COMPARE, paired_difference, summary

ABOUT = "Any knob of main.py over several values, several models and seeds: test accuracy with 95 % intervals."
# The knobs a training's numbers depend on (and the split); the seed is the
# grid's own axis, and --devices needs this process's devices.
KNOBS = (*(key for key in TRAINING_KEYS if key not in ("verbose", "seed", "devices")), "val_split")


def add_arguments(parser, flag):
    def knob_and_values(text):
        """KNOB=V1,V2,...: each value parsed and bounded exactly as main.py's --KNOB parses it."""
        knob, _, values = text.partition("=")
        if knob not in KNOBS or not values:
            raise argparse.ArgumentTypeError(
                f"expected KNOB=V1,V2,... with KNOB one of {', '.join(KNOBS)}; got {text!r}"
            )
        one_flag = OneLineErrorParser(add_help=False)
        flag(one_flag, knob)
        action = one_flag._actions[-1]  # main.py's --KNOB: its type and choices
        parsed = []
        for value in values.split(","):
            try:
                value = action.type(value) if action.type else value
            except argparse.ArgumentTypeError as error:
                raise argparse.ArgumentTypeError(f"{knob}: {error}") from None
            if action.choices is not None and value not in action.choices:
                raise argparse.ArgumentTypeError(
                    f"{knob}: {value!r} is not one of {', '.join(map(str, action.choices))}"
                )
            parsed.append(value)
        return knob, parsed

    parser.add_argument(
        "--vary",
        type=knob_and_values,
        required=True,
        metavar="KNOB=V1,V2,...",
        help=f"the knob and its values, each as main.py's flag of that name takes it; KNOB one of {', '.join(KNOBS)}",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODEL_NAMES,
        default=["lenet", "lenet_fc_bn2"],
        metavar="MODEL",
        help="the models to train at every value (the first is the reference of the paired differences)",
    )
    flag(
        parser,
        "seed",
        "--seeds",
        nargs="+",
        default=list(range(FEWEST_SEEDS_TO_COMPARE)),
        help="one training of every model at every value per seed",
    )


def run(config, args):
    """Every model at every value of the knob for every seed, through the executor."""
    knob, values = args.vary
    if knob in ("optimizer", "learning_rate"):  # a name Keras does not know is refused before anything trains
        for value in values:
            changed = replace(config, **{knob: value})
            make_optimizer(changed.optimizer, changed.learning_rate)
    data = utils.load(config)
    plan = [
        Training(name, replace(config, seed=seed, **{knob: value}), label=f"{knob} {value}, seed {seed}: {name}")
        for value in values
        for seed in args.seeds
        for name in args.models
    ]
    folder, rows = study_dir(config, "grid") / knob, [None] * len(plan)

    def record(index, done):
        training, result = plan[index], done.result
        rows[index] = {
            "model": training.name,
            knob: getattr(training.config, knob),
            "seed": training.config.seed,
            "test_accuracy": result.test_accuracy,
            "test_loss": result.test_loss,
            "diverged": result.diverged is not None,
            "seconds": round(result.train_seconds, 1),
        }
        write_rows(folder / "grid.csv", [row for row in rows if row])  # kept if the study is interrupted

    run_trainings(config, plan, data, record)
    result = {"knob": knob, "values": values, "seeds": args.seeds, "epochs": config.epochs, "models": {}}
    for name in args.models:
        result["models"][name] = {}
        for value in values:
            mine = [row for row in rows if (row["model"], row[knob]) == (name, value)]
            finished = [row["test_accuracy"] for row in mine if not row["diverged"]]
            result["models"][name][str(value)] = {
                **(summary(finished) if finished else {"n": 0}),
                "diverged": sum(row["diverged"] for row in mine),
            }
    reference = args.models[0]
    result["minus_" + reference] = {
        name: {str(value): difference(rows, knob, value, name, reference) for value in values}
        for name in args.models[1:]
    }
    print(f"\ntest accuracy over seeds {args.seeds}, mean (95 % interval)")
    print(f"{knob:>14}  " + "  ".join(f"{name:>30}" for name in args.models))
    for value in values:
        cells = [result["models"][name][str(value)] for name in args.models]
        print(f"{value!s:>14}  " + "  ".join(f"{cell_text(cell):>30}" for cell in cells))
    visualizations.plot_grid(
        knob,
        values,
        {name: [result["models"][name][str(value)] for value in values] for name in args.models},
        folder / "grid.png",
        f"{len(args.seeds)} seeds, {config.epochs} epochs; band: 95 % interval of the mean",
    )
    write_summary(folder, result)
    return result


def difference(rows, knob, value, name, reference):
    """name minus reference at one value, paired by seed (seeds where either diverged left out)."""
    by_seed = {}
    for row in rows:
        if row[knob] == value and row["model"] in (name, reference) and not row["diverged"]:
            by_seed.setdefault(row["seed"], {})[row["model"]] = row["test_accuracy"]
    pairs = [(both[name], both[reference]) for both in by_seed.values() if len(both) == 2]
    return paired_difference(*zip(*pairs)) if len(pairs) >= 2 else {"n": len(pairs)}


def cell_text(cell):
    if not cell["n"]:
        return "all diverged"
    if cell["low"] is None:
        return f"{cell['mean']:.4f}"
    text = f"{cell['mean']:.4f} ({cell['low']:.4f} to {cell['high']:.4f})"
    return text + (f", {cell['diverged']} diverged" if cell["diverged"] else "")
