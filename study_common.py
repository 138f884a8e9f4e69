"""What the studies share: their settings and data, their folders and files,
copies of a trained network with other inference statistics, and running
their trainings (in this process or side by side, trainings.Executor)."""

import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

import files
import models_handling
import training_callbacks
import trainings
import utils
from lenet import INPUT_SHAPE, LeNet5
from main import DEFAULTS


def base_settings(args, **changes):
    """main.py's settings at its defaults, with this study's flags applied."""
    return replace(models_handling.Settings.from_mapping({**DEFAULTS, **vars(args)}), **changes)


def load_splits(args, seed):
    return utils.load_data(args.data, args.dataset, DEFAULTS["val_split"], seed, DEFAULTS["output_size"])


def load_raw(args):
    """The study's data as it travels to the workers (trainings.RawData)."""
    raw = utils.load_raw(args.data, args.dataset)
    utils.check_raw(*raw, num_classes=DEFAULTS["output_size"])
    return trainings.RawData.of(raw, utils.data_record(args.data, args.dataset))


def study_dir(args, name):
    return Path(args.results_dir) / name


def write_rows(path, rows):
    """A list of dicts as CSV, columns in the first row's order."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files.write_text(path, text.getvalue())


def write_summary(folder, summary):
    files.write_text(Path(folder) / "summary.json", json.dumps(summary, indent=2) + "\n")


def copy_network(source, target):
    """Copy the affine layers', the classifier's and BN's gamma and beta from
    one LeNet5 to another with the same BN places (BN's statistics stay)."""
    for name, layer in source.affine.items():
        target.affine[name].set_weights(layer.get_weights())
    target.classifier.set_weights(source.classifier.get_weights())
    for name, norm in source.norm.items():
        target.norm[name].gamma.assign(norm.gamma)
        target.norm[name].beta.assign(norm.beta)


def rebuild(model, window_size=None, network_class=LeNet5):
    """A copy of `model` (ours, any BN places) with another window size or inference
    rule; the caller fills its statistics."""
    config = {key: value for key, value in model.get_config().items() if key in ("bn_after", "output_size",
                                                                                   "epsilon", "window_size")}
    if window_size is not None:
        config["window_size"] = window_size
    copy = network_class(**config, name=model.name)
    copy(np.zeros((1, *INPUT_SHAPE), np.float32))
    copy_network(model, copy)
    return copy


def with_precise_statistics(model, images, settings, window_size=None):
    """A copy of `model` (ours) whose window of `window_size` rows (default: the
    run's) is refilled from its final weights, as the `precise` rule does after
    the last epoch (the same batches, at the same window size)."""
    window_size = window_size or settings.window_size
    copy = rebuild(model, window_size)
    training_callbacks.refill(copy, images, replace(settings, window_size=window_size), settings.epochs - 1)
    return copy


def accuracy_of(model, images, labels, batch_size):
    """Test accuracy of `model` predicting `batch_size` images at a time, and its logits."""
    logits = model.predict(images, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == labels)), logits


def run_trainings(args, plan, data, on_finished=None):
    """Every Training of `plan`, through trainings.Executor at the study's
    --jobs and --cluster: each one's Finished, in the order of `plan`. A line
    as each one ends."""

    def finished(index, done):
        print(f"  {plan[index].describe()}: {outcome(done.result)}", flush=True)
        if on_finished:
            on_finished(index, done)

    executor = trainings.Executor(args.jobs, args.cluster, len(plan))
    print(f"  {len(plan)} training(s) of {args.epochs} epochs {executor.describe()}", flush=True)
    with executor:
        return executor.run(plan, data, finished)


def train_and_report(name, splits, settings, **options):
    """models_handling.run_model, with a line as the run starts and one as it ends."""
    print(f"  {name}: training {settings.epochs} epochs on {len(splits.y_train)} images ...", flush=True)
    result = models_handling.run_model(name, splits, settings, **options)
    print(f"  {name}: {outcome(result)}", flush=True)
    return result


def outcome(result):
    """How a finished training's line ends: its test accuracy or where it diverged, and its seconds."""
    ending = (f"diverged at epoch {result.diverged['epoch']}, step {result.diverged['step']}" if result.diverged
              else f"test accuracy {result.test_accuracy:.4f}")
    return f"{ending} ({result.train_seconds:.1f} s)"



def add_statistics_rule(parser):
    parser.add_argument("--bn_statistics", choices=models_handling.BN_STATISTICS,
                        default=DEFAULTS["bn_statistics"], help="as main.py --bn_statistics")
