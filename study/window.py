"""window: which statistics to predict with; test accuracy against the
inference window (both rules) and the inference batch size, for our rules
and for the earlier project's."""

import math
from dataclasses import replace

import numpy as np

import utils
import visualizations
from study.common import accuracy_of, run_trainings, study_dir, write_rows, write_summary

ABOUT = "Test accuracy against the inference window (both statistics rules) and the inference batch size."


def add_arguments(parser, flag):
    flag(
        parser,
        "window_size",
        "--windows",
        nargs="+",
        default=[1, 5, 50, 500],
        help="window sizes; the whole run's number of training steps is always added",
    )
    flag(
        parser,
        "inference_batch_size",
        "--inference_batch_sizes",
        nargs="+",
        default=[1, 10, 100, 1000],
        help="how many test images each rule predicts at a time",
    )


def with_last_batches(model, window_size):
    """`model` as if trained with `window_size`: its statistics, the average of the
    last `window_size` training batches recorded by `model` (whose window must
    have held every batch of the run)."""
    from lenet import rebuild

    copy = rebuild(model, window_size)
    for name, norm in model.norm.items():
        recorded = int(norm.recorded_batches.numpy())
        if recorded > norm.window_size:
            raise ValueError("the source model's window wrapped; train it with a longer window")
        first = max(0, recorded - window_size)
        kept = recorded - first
        target = copy.norm[name]
        target.mean_window.assign(
            np.concatenate([norm.mean_window.numpy()[first:recorded], target.mean_window.numpy()[kept:]])
        )
        target.variance_window.assign(
            np.concatenate([norm.variance_window.numpy()[first:recorded], target.variance_window.numpy()[kept:]])
        )
        target.recorded_batches.assign(kept)
    return copy


def run(config, args):
    """Test accuracy of lenet_fc_bn2 against the inference window under both
    statistics rules, and against the inference batch size, for our rules and
    for the earlier project's."""
    from harness.executor import Training
    from lenet import rebuild
    from study.networks import EarlierProjectLeNet5
    from training.precise import with_precise_statistics

    data = utils.load(config)
    splits = data.splits(config.val_split, config.seed)
    steps_per_epoch = math.ceil(len(splits.x_train) / config.batch_size)
    whole_run = steps_per_epoch * config.epochs
    # Training does not depend on the window or the rule (it normalizes with
    # batch statistics), so one `moving` run with a window holding every batch
    # gives every smaller moving window exactly, and the final weights for
    # every precise one.
    settings = replace(config, window_size=whole_run, bn_statistics="moving")
    training = Training("lenet_fc_bn2", settings, label=f"lenet_fc_bn2 with a window of all {whole_run} batches")
    (done,) = run_trainings(replace(settings, jobs=1), [training], data)  # the model is used here
    model = done.load_model()

    x_test, y_test = splits.x_test, splits.y_test
    rows = []
    window_points = {"moving: the last training steps": [], "precise: refilled from the final weights": []}
    sizes = sorted({size for size in args.windows if size < whole_run} | {whole_run})
    for size in sizes:
        networks = (with_last_batches(model, size), with_precise_statistics(model, splits.x_train, settings, size))
        for (rule, points), network in zip(window_points.items(), networks):
            accuracy, _ = accuracy_of(network, x_test, y_test, 1000)
            rows.append({"series": f"window_size, {rule.split(':')[0]}", "x": size, "test_accuracy": accuracy})
            points.append((size, accuracy))
        label = f"{size}" if size < whole_run else f"{size} (as many as training steps)"
        print(
            f"  window {label}: test accuracy {points[-1][1]:.4f} precise, "
            f"{window_points['moving: the last training steps'][-1][1]:.4f} moving"
        )

    window_size = config.window_size
    rules = {
        f"ours, precise: {window_size} batches through the final weights": with_precise_statistics(
            model, splits.x_train, settings, window_size
        ),
        f"ours, moving: the last {window_size} training batches": with_last_batches(model, window_size),
        "earlier project: the predicted batch's own statistics": rebuild(model, network_class=EarlierProjectLeNet5),
    }
    batch_points, logits = {rule: [] for rule in rules}, {rule: [] for rule in rules}
    for rule, network in rules.items():
        for batch_size in args.inference_batch_sizes:
            accuracy, rule_logits = accuracy_of(network, x_test, y_test, batch_size)
            batch_points[rule].append((batch_size, accuracy))
            logits[rule].append(rule_logits)
            rows.append({"series": rule, "x": batch_size, "test_accuracy": accuracy})
            print(f"  {rule}, batches of {batch_size}: test accuracy {accuracy:.4f}")

    def spread(rule):
        """How much the rule's outputs move with the inference batch size."""
        first = logits[rule][0]
        return {
            "largest_logit_difference": max(float(np.max(np.abs(other - first))) for other in logits[rule]),
            "same_predicted_classes": all(
                np.array_equal(np.argmax(other, 1), np.argmax(first, 1)) for other in logits[rule]
            ),
        }

    folder = study_dir(config, "window")
    write_rows(folder / "window.csv", rows)
    visualizations.plot_window_study(window_points, batch_points, folder / "window.png")
    summary = {
        "epochs": config.epochs,
        "seed": config.seed,
        "training_steps": whole_run,
        "window_size": {
            rule.split(":")[0]: {str(size): accuracy for size, accuracy in points}
            for rule, points in window_points.items()
        },
        "inference_batch_size": {rule: {str(b): a for b, a in points} for rule, points in batch_points.items()},
        "movement_with_batch_size": {rule: spread(rule) for rule in rules},
    }
    write_summary(folder, summary)
    return summary
