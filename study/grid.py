"""grid: any knob of main.py over several values, for several models and
seeds: test accuracy against the knob's values, each with its 95 % interval
over the seeds, and the paired difference of each model from the first.

The other studies that are grids (lr, seeds, batch_size, init) are built on
the same three steps: `plan` every line at every point for every seed,
`train` the plan through the executor (one CSV row per training, kept as
each one ends; --resume 1 reuses the rows of trainings already finished with
the same settings and data), and `sweep`'s table, plot and summary.json."""

import argparse
from dataclasses import dataclass, field, replace

import utils
import visualizations
from common.config import MODEL_NAMES
from harness import results_folder
from harness.flags import OneLineErrorParser, add_models, add_seeds
from study.common import run_trainings, study_dir, write_rows, write_summary
from study.intervals import FEWEST_SEEDS_TO_COMPARE, paired_difference, summary

ABOUT = "Any knob of main.py over several values, several models and seeds: test accuracy with 95 % intervals."
# The knobs of main.py a grid may vary: those a training's numbers depend on
# (Config.TRAINING_KEYS), and the split, but not these: the seed is the grid's
# own axis, --devices needs this process's devices, verbose changes nothing.
NOT_VARIED = ("verbose", "seed", "devices")
KNOBS_HELP = "a knob of main.py a training depends on (python main.py --help), or val_split; not verbose, seed, devices"


@dataclass(frozen=True)
class Line:
    """One line of a grid's plot: a model, trained under some settings of its own."""

    name: str  # a MODEL_NAMES name
    changes: dict = field(default_factory=dict)  # e.g. {"bn_statistics": "moving"}
    label: str = ""  # the model's name by default
    build: object = None  # a picklable callable config -> compiled model (executor.Training.build)

    def describe(self):
        return self.label or self.name


def plan(config, lines, points, seeds, callback=None):
    """Every line at every point (a dict of settings) for every seed: a
    harness.executor.Training each, its `line` the Line's label."""
    from harness.executor import Training

    trainings = []
    for point in points:
        for seed in seeds:
            for line in lines:
                settings = replace(config, seed=seed, **{**line.changes, **point})
                where = ", ".join(f"{key} {value}" for key, value in point.items())
                label = f"{where + ', ' if where else ''}seed {seed}: {line.describe()}"
                trainings.append(
                    Training(
                        line.name,
                        settings,
                        label=label,
                        build=line.build,
                        callback=callback,
                        line=line.describe(),
                        point=point,
                    )
                )
    return trainings


def train(config, trainings, data, csv_path, row_of, resume=None):
    """Every training through the executor; `row_of(training, result)` its
    CSV row. Returns the rows and the ModelResults in the order of
    `trainings` (None for a training kept from earlier). The rows go to
    `csv_path` as each training ends.

    Unless `resume` is None (a study that cannot resume), each row also goes
    to a JSON beside the CSV as main.py's summary.json keeps a model: under
    the training's label, with what it depends on (results_folder.run_identity),
    and a true `resume` (--resume 1) keeps the rows of the trainings there
    that ran with the same settings on the same data."""
    record = csv_path.with_suffix(".trainings.json")
    identities = [identity(training, data.record) for training in trainings]
    labels = [training.describe() for training in trainings]
    if len(set(labels)) < len(labels):  # a plan's bug: the record keeps one row per label
        raise ValueError(f"two trainings share a label: {[label for label in labels if labels.count(label) > 1][0]}")
    # Read even when not resuming: the run will update it, and a damaged one
    # is refused now rather than after the first training.
    earlier = results_folder.read_summary(record.parent, record.name) if resume is not None else {}
    if any(not isinstance(entry, dict) or "row" not in entry for entry in earlier.values()):
        raise utils.UsageError(
            f"{record} was written by an older version of this project; delete it (--resume 1 then trains "
            "every training again)"
        )
    earlier = earlier if resume else {}
    rows = [
        earlier[label]["row"] if results_folder.same_run(earlier.get(label), kind) else None
        for label, kind in zip(labels, identities)
    ]
    finished = [None] * len(trainings)
    todo = [index for index, row in enumerate(rows) if row is None]
    if len(todo) < len(trainings):
        kept = len(trainings) - len(todo)
        print(f"  {kept} training(s) finished earlier with these settings and data: kept (--resume)")

    def record_one(index, result):
        index = todo[index]
        rows[index], finished[index] = row_of(trainings[index], result), result
        write_rows(csv_path, [row for row in rows if row is not None])  # kept if the study is interrupted
        if resume is not None:  # the other trainings there stay in the file
            entry = {**identities[index], "row": rows[index]}
            results_folder.update_summary(record.parent, labels[index], entry, record.name)

    if todo:
        run_trainings(config, [trainings[index] for index in todo], data, record_one)
    elif rows:
        write_rows(csv_path, rows)
    return rows, finished


def identity(training, record):
    """What a training's row depends on: its settings (its model's name
    among them), the data and the validation split."""
    settings = training.config
    return results_folder.run_identity(
        {"model": training.name, **settings.training_settings()}, {**record, "val_split": settings.val_split}
    )


def sweep(config, knob, values, lines, seeds, data, folder):
    """Every line at every value of `knob` for every seed: grid.csv, grid.png
    and summary.json in `folder`, and a table of the means printed."""
    trainings = plan(config, lines, [{knob: value} for value in values], seeds)

    def row_of(training, result):
        return {
            "model": training.line,
            knob: training.point[knob],
            "seed": training.config.seed,
            "test_accuracy": result.test_accuracy,
            "test_loss": result.test_loss,
            "diverged": result.diverged is not None,
            "seconds": round(result.train_seconds, 1),
        }

    rows, _ = train(config, trainings, data, folder / "grid.csv", row_of, config.resume)
    labels = [line.describe() for line in lines]
    result = {"knob": knob, "values": values, "seeds": seeds, "epochs": config.epochs, "models": {}}
    result["diverged_counted_as"] = "test accuracy 0 (error 1)"
    for label in labels:
        result["models"][label] = {}
        for value in values:
            mine = [row for row in rows if (row["model"], row[knob]) == (label, value)]
            accuracies = [accuracy_counted(row) for row in mine]
            result["models"][label][str(value)] = {
                **(summary(accuracies) if accuracies else {"n": 0}),
                "diverged": sum(row["diverged"] for row in mine),
            }
    reference = labels[0]
    result["minus_" + reference] = {
        label: {str(value): difference(rows, knob, value, label, reference) for value in values} for label in labels[1:]
    }
    print(f"\ntest accuracy over seeds {seeds}, mean (95 % interval)")
    print(f"{knob:>14}  " + "  ".join(f"{label:>30}" for label in labels))
    for value in values:
        cells_text = [cell_text(result["models"][label][str(value)]) for label in labels]
        print(f"{value!s:>14}  " + "  ".join(f"{text:>30}" for text in cells_text))
    visualizations.plot_grid(
        knob,
        values,
        {label: [result["models"][label][str(value)] for value in values] for label in labels},
        folder / "grid.png",
        f"{len(seeds)} seeds, {config.epochs} epochs; 95 % interval of the mean",
    )
    write_summary(folder, result)
    return result


# ---------------------------------------------------------------- the grid command


def add_arguments(parser, flag):
    def knob_and_values(text):
        """KNOB=V1,V2,...: each value parsed and bounded exactly as main.py's --KNOB parses it."""
        knob, _, values = text.partition("=")
        if knob in NOT_VARIED or not values:
            raise argparse.ArgumentTypeError(f"expected KNOB=V1,V2,... with KNOB {KNOBS_HELP}; got {text!r}")
        try:
            return knob, [parse_like_main(flag, knob, value) for value in values.split(",")]
        except KeyError:
            raise argparse.ArgumentTypeError(f"{knob!r} is not a knob of main.py: KNOB is {KNOBS_HELP}") from None

    parser.add_argument(
        "--vary",
        type=knob_and_values,
        required=True,
        metavar="KNOB=V1,V2,...",
        help=f"the knob and its values, each as main.py's flag of that name takes it; KNOB: {KNOBS_HELP}",
    )
    add_models(parser, MODEL_NAMES, default=["lenet", "lenet_fc_bn2"])
    add_seeds(parser, FEWEST_SEEDS_TO_COMPARE)
    add_resume(parser, flag)


def parse_like_main(flag, knob, value):
    """One value of a knob, parsed and bounded as main.py's --KNOB parses it."""
    one_flag = OneLineErrorParser(add_help=False)
    flag(one_flag, knob)
    action = one_flag._actions[-1]  # main.py's --KNOB: its type and choices
    try:
        value = action.type(value) if action.type else value
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{knob}: {error}") from None
    if action.choices is not None and value not in action.choices:
        raise argparse.ArgumentTypeError(f"{knob}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def add_resume(parser, flag):
    flag(
        parser,
        "resume",
        help="1: keep the trainings an earlier run of this study finished with the same settings and data "
        "(recorded beside its CSV, in .trainings.json) and train only the others; 0: train them all",
    )


def run(config, args):
    """Every model at every value of the knob for every seed, through the executor."""
    from models_handling import make_optimizer

    knob, values = args.vary
    if knob not in (*config.TRAINING_KEYS, "val_split"):
        raise utils.UsageError(f"--vary {knob}=...: a training does not depend on {knob}; KNOB is {KNOBS_HELP}")
    if knob in ("optimizer", "learning_rate"):  # a name Keras does not know is refused before anything trains
        for value in values:
            changed = replace(config, **{knob: value})
            make_optimizer(changed.optimizer, changed.learning_rate)
    data = utils.load(config)
    classes = int(max(data.y_train.max(), data.y_test.max())) + 1
    if knob == "output_size" and min(values) < classes:  # as main.py refuses an --output_size below the labels
        raise utils.UsageError(
            f"--vary output_size={min(values)}: the data's labels run from 0 to {classes - 1}; give values of at "
            f"least {classes}"
        )
    lines = [Line(name) for name in args.models]
    return sweep(config, knob, values, lines, args.seeds, data, study_dir(config, "grid") / knob)


def difference(rows, knob, value, label, reference):
    """label minus reference at one value, paired by seed (a diverged training counted as accuracy_counted says)."""
    by_seed = {}
    for row in rows:
        if row[knob] == value and row["model"] in (label, reference):
            by_seed.setdefault(row["seed"], {})[row["model"]] = accuracy_counted(row)
    pairs = [(both[label], both[reference]) for both in by_seed.values() if len(both) == 2]
    return paired_difference(*zip(*pairs)) if len(pairs) >= 2 else {"n": len(pairs)}


def accuracy_counted(row):
    """A training's test accuracy as the grid counts it: a diverged one as 0
    (error 1), so that a point where some seeds diverge is not reported on
    its lucky seeds alone. The count of diverged trainings stands beside it."""
    return 0.0 if row["diverged"] else row["test_accuracy"]


def cell_text(cell):
    if not cell["n"]:
        return "all diverged"
    if cell["low"] is None:
        return f"{cell['mean']:.4f}"
    text = f"{cell['mean']:.4f} ({cell['low']:.4f} to {cell['high']:.4f})"
    return text + (f", {cell['diverged']} diverged" if cell["diverged"] else "")
