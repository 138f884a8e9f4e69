"""What batch normalization does here: six studies, each one command.

    python studies.py keras_check --data mnist.npz   # ours against keras.layers.BatchNormalization
    python studies.py seeds --data mnist.npz         # the five variants over seeds, both statistics rules
    python studies.py figure1 --data mnist.npz       # the BN paper's Figure 1 on LeNet-5
    python studies.py lr --data mnist.npz            # plain SGD at learning rates 0.01 to 10
    python studies.py window --data mnist.npz        # inference statistics: rule, window and batch size
    python studies.py replicas --data mnist.npz      # the batch split over 1 to 8 devices, BN synchronized or not

Each writes PNGs, a CSV of its numbers and a summary.json into
<results_dir>/<study>/ (default results/studies/<study>/). Training goes
through models_handling, exactly as main.py trains; every default not listed
by `python studies.py NAME --help` is main.py's DEFAULTS.
"""

import argparse
import contextlib
import csv
import functools
import io
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import utils

utils.import_tensorflow_quietly()  # before the modules below import it

import keras  # noqa: E402
import numpy as np  # noqa: E402

import distribution  # noqa: E402
import models_handling  # noqa: E402
import trainings  # noqa: E402
import visualizations  # noqa: E402
from lenet import (  # noqa: E402
    INPUT_SHAPE,
    KERAS_BN_VARIANT,
    VARIANTS,
    BatchNorm,
    LeNet5,
    batch_statistics,
    momentum_matching_window,
    normalize,
)
from command_line import (  # noqa: E402
    LIMITS,
    OneLineErrorParser,
    auto_or_int_up_to,
    auto_or_switch,
    float_up_to,
    int_up_to,
)
from main import DEFAULTS  # noqa: E402

F6_UNITS = 84  # the sigmoids of LeNet-5's F6 layer, whose inputs figure1 follows

# ---------------------------------------------------------------- shared pieces


def base_settings(args, **changes):
    """main.py's settings at its defaults, with this study's flags applied."""
    return replace(models_handling.Settings.from_mapping({**DEFAULTS, **vars(args)}), **changes)


def load_splits(args, seed):
    return utils.load_data(args.data, args.dataset, DEFAULTS["val_split"], seed, DEFAULTS["output_size"])


def study_dir(args, name):
    return Path(args.results_dir) / name


def write_rows(path, rows):
    """A list of dicts as CSV, columns in the first row's order."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    utils.write_text(path, text.getvalue())


def write_summary(folder, summary):
    utils.write_text(Path(folder) / "summary.json", json.dumps(summary, indent=2) + "\n")


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
    models_handling.refill(copy, images, replace(settings, window_size=window_size), settings.epochs - 1)
    return copy


def accuracy_of(model, images, labels, batch_size):
    """Test accuracy of `model` predicting `batch_size` images at a time, and its logits."""
    logits = model.predict(images, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == labels)), logits


def load_raw(args):
    """The study's data as it travels to the workers (trainings.RawData)."""
    raw = utils.load_raw(args.data, args.dataset)
    utils.check_raw(*raw, num_classes=DEFAULTS["output_size"])
    return trainings.RawData.of(raw, utils.data_record(args.data, args.dataset))


def run_trainings(args, plan, data, on_finished=None):
    """Every Training of `plan`, through trainings.Executor at the study's
    --jobs and --cluster: each one's Finished, in the order of `plan`. A line
    as each one ends."""

    def finished(index, done):
        print(f"  {plan[index].describe()}: {outcome(done.result)}", flush=True)
        if on_finished:
            on_finished(index, done)

    executor = trainings.Executor(args.jobs, args.cluster, len(plan))
    where = (f"on {executor.address}" if executor.address else
             "in this process" if executor.in_process else f"in {executor.jobs} worker processes")
    print(f"  {len(plan)} training(s) of {args.epochs} epochs {where}", flush=True)
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


# ---------------------------------------------------------------- keras_check


def keras_reference(settings):
    """lenet_keras_bn, compiled, with the initial weights of our lenet_fc_bn2
    at the same seed (the same seed gives the same weights; this makes sure)."""
    ours = models_handling.build_and_compile("lenet_fc_bn2", settings)
    reference = models_handling.build_and_compile(KERAS_BN_VARIANT, settings)
    copy_network(ours, reference)
    return reference


def keras_check(args):
    """Ours against keras.layers.BatchNormalization in the same network, from the
    same initial weights, on the same batches: their curves should coincide."""
    data = load_raw(args)
    settings = base_settings(args)
    ours = trainings.Training("lenet_fc_bn2", settings, DEFAULTS["val_split"], args.seed, label="ours")
    reference = trainings.Training(KERAS_BN_VARIANT, settings, DEFAULTS["val_split"], args.seed, label="keras",
                                   build=keras_reference)
    if settings.jit_compile == "auto":  # the reference on the path chosen for ours: the same arithmetic
        (done_ours,) = run_trainings(args, [ours], data)
        settings = replace(settings, jit_compile=done_ours.result.jit_choice["xla"])
        (done_keras,) = run_trainings(args, [replace(reference, settings=settings)], data)
    else:
        done_ours, done_keras = run_trainings(args, [ours, reference], data)
    results = {"ours": done_ours.result, "keras": done_keras.result}

    folder = study_dir(args, "keras_check")
    rows, gaps = [], {}
    for epoch in range(settings.epochs):
        row = {"epoch": epoch + 1}
        for label, result in results.items():
            for key in models_handling.HISTORY_KEYS:
                row[f"{label}_{key}"] = result.history[key][epoch]
        rows.append(row)
    for key in models_handling.HISTORY_KEYS:
        gaps[key] = max(abs(row[f"ours_{key}"] - row[f"keras_{key}"]) for row in rows)
    write_rows(folder / "keras_check.csv", rows)
    visualizations.plot_side_by_side(
        {"ours (lenet_fc_bn2)": results["ours"].history, "keras.layers.BatchNormalization": results["keras"].history},
        folder / "keras_check.png",
        "hand-written BN against Keras's layer, same initial weights and batches",
    )
    summary = {
        "bn_statistics": settings.bn_statistics,
        "largest_gap_over_epochs": gaps,
        "test_accuracy": {label: result.test_accuracy for label, result in results.items()},
        "keras_momentum": momentum_matching_window(settings.window_size),
        "epochs": settings.epochs,
        "seed": settings.seed,
    }
    write_summary(folder, summary)
    print("largest gap between the two networks over the epochs:")
    for key, gap in gaps.items():
        print(f"  {key:<14}{gap:.4f}")
    return summary


# ---------------------------------------------------------------- seeds


def seeds(args):
    """The variants over several seeds (split, initial weights and shuffling),
    under each statistics rule: mean and standard deviation of every curve and
    of the test accuracy."""
    data = load_raw(args)
    plan = [trainings.Training(name, base_settings(args, seed=seed, bn_statistics=rule), DEFAULTS["val_split"],
                               seed, label=f"seed {seed}, {rule} statistics: {name}")
            for seed in args.seeds for rule in args.rules for name in args.models]
    rows = [None] * len(plan)

    def record(index, done):
        training, result = plan[index], done.result
        rows[index] = {"model": training.name, "bn_statistics": training.settings.bn_statistics,
                       "seed": training.split_seed, "test_accuracy": result.test_accuracy,
                       "test_loss": result.test_loss}
        # kept if the study is interrupted, in the order of the plan
        write_rows(study_dir(args, "seeds") / "seeds.csv", [row for row in rows if row])

    finished = run_trainings(args, plan, data, record)
    histories = {(rule, name): [] for rule in args.rules for name in args.models}
    for training, done in zip(plan, finished):
        histories[training.settings.bn_statistics, training.name].append(done.result.history)

    def across_seeds(rule, statistic):
        return {
            name: {key: statistic([h[key] for h in histories[rule, name]], axis=0).tolist()
                   for key in models_handling.HISTORY_KEYS}
            for name in args.models
        }

    folder = study_dir(args, "seeds")
    summary = {"seeds": args.seeds, "epochs": args.epochs, "test_accuracy": {}}
    for rule in args.rules:
        for metric in ("accuracy", "loss"):
            visualizations.plot_comparison(
                across_seeds(rule, np.mean), metric, folder / f"seeds_{rule}_{metric}.png",
                across_seeds(rule, np.std),
                title_prefix=f"{rule} statistics, mean +- std over {len(args.seeds)} seeds: ",
            )
        print(f"\n{'model':<16}test accuracy over seeds {args.seeds}, {rule} statistics")
        summary["test_accuracy"][rule] = {}
        for name in args.models:
            accuracies = [row["test_accuracy"] for row in rows if (row["model"], row["bn_statistics"]) == (name, rule)]
            summary["test_accuracy"][rule][name] = {
                "mean": float(np.mean(accuracies)), "std": float(np.std(accuracies)), "per_seed": accuracies,
            }
            print(f"{name:<16}{np.mean(accuracies):.4f} +- {np.std(accuracies):.4f}")
    write_summary(folder, summary)
    return summary


# ---------------------------------------------------------------- figure1


class SigmoidInputProbe(keras.callbacks.Callback):
    """Every `every` training steps (and before the first and after the last), the 15th, 50th and
    85th percentiles of what one F6 sigmoid receives on fixed images, and the
    test accuracy. Measured in inference mode, as the network would predict;
    under the `precise` rule with BN statistics refilled from the weights of
    that step, so that each point describes the network as it then is."""

    def __init__(self, probe_images, test_images, test_labels, unit, every, train_images, settings):
        super().__init__()
        self.probe_images, self.test_images, self.test_labels = probe_images, test_images, test_labels
        self.unit, self.every = unit, every
        self.train_images, self.settings = train_images, settings
        self.step = 0
        self.curve = {key: [] for key in ("step", "test_accuracy", "p15", "p50", "p85")}

    def measure(self):
        if self.settings.bn_statistics == "precise" and self.model.norm:
            # The step numbers the draw, so each measurement has its own batches.
            models_handling.refill(self.model, self.train_images, self.settings, self.step)
        received = self.model.layer_outputs(self.probe_images, training=False)["F6"][:, self.unit]
        percentiles = np.percentile(np.asarray(received), [15, 50, 85])
        for key, value in zip(("p15", "p50", "p85"), percentiles):
            self.curve[key].append(float(value))
        self.curve["step"].append(self.step)
        self.curve["test_accuracy"].append(accuracy_of(self.model, self.test_images, self.test_labels, 1000)[0])

    def on_train_begin(self, logs=None):
        self.measure()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            self.measure()

    def on_train_end(self, logs=None):
        if self.curve["step"][-1] != self.step:  # end on the trained network
            self.measure()

    def report(self):
        """What comes back from where it trained (trainings.Finished.report)."""
        return self.curve


def make_probe(splits, settings, probe_count, unit, every):
    """A SigmoidInputProbe on a training's own splits (made where it trains)."""
    return SigmoidInputProbe(splits.x_val[:probe_count], splits.x_test, splits.y_test, unit, every,
                             splits.x_train, settings)


def figure1(args):
    """The BN paper's Figure 1 on LeNet-5, without BN and with BN everywhere."""
    data = load_raw(args)
    settings = base_settings(args)
    probe = functools.partial(make_probe, probe_count=args.probe_images, unit=args.unit, every=args.every)
    plan = [trainings.Training(name, settings, DEFAULTS["val_split"], args.seed, callback=probe)
            for name in ("lenet", "lenet_fc_bn2")]
    curves, rows, test_accuracy = {}, [], {}
    for training, done in zip(plan, run_trainings(args, plan, data)):
        name, curve = training.name, done.report
        curves[name], test_accuracy[name] = curve, done.result.test_accuracy
        rows += [{"model": name, **dict(zip(curve, values))} for values in zip(*curve.values())]
    probe_images = min(args.probe_images, len(utils.split_train_val(len(data.y_train), DEFAULTS["val_split"],
                                                                    args.seed)[1]))

    folder = study_dir(args, "figure1")
    write_rows(folder / "figure1.csv", rows)
    visualizations.plot_figure1(curves, folder / "figure1.png")
    summary = {
        "unit": args.unit, "probe_images": probe_images, "every": args.every, "epochs": args.epochs,
        "seed": args.seed, "bn_statistics": settings.bn_statistics, "test_accuracy": test_accuracy,
        "final": {name: {key: values[-1] for key, values in curve.items()} for name, curve in curves.items()},
        "spread_p85_minus_p15": {
            name: {"first": curve["p85"][0] - curve["p15"][0], "last": curve["p85"][-1] - curve["p15"][-1]}
            for name, curve in curves.items()
        },
    }
    for name, curve in curves.items():
        steps = np.asarray(curve["step"])
        reached = [int(s) for s, a in zip(steps, curve["test_accuracy"]) if a >= args.target]
        summary.setdefault("first_step_at_target", {})[name] = reached[0] if reached else None
        print(f"{name}: median F6 input {curve['p50'][0]:+.2f} -> {curve['p50'][-1]:+.2f}, "
              f"test accuracy {curve['test_accuracy'][-1]:.4f} at step {curve['step'][-1]}, "
              f"first at {args.target}: step {summary['first_step_at_target'][name]}")
    summary["target"] = args.target
    write_summary(folder, summary)
    return summary


# ---------------------------------------------------------------- lr


def learning_rates(args):
    """lenet and lenet_fc_bn2 with plain SGD at several learning rates, and with
    the default optimizer for reference, all for the same number of epochs."""
    data = load_raw(args)
    splits = data.splits(DEFAULTS["val_split"], args.seed)
    runs = [("sgd", rate) for rate in args.rates] + [(DEFAULTS["optimizer"], None)]
    # Training does not depend on the rule, so one run under `moving` gives
    # both: its own test accuracy, and the `precise` one after the refill
    # that rule would have made after the last epoch.
    plan = [trainings.Training(name, base_settings(args, optimizer=optimizer, learning_rate=rate,
                                                   bn_statistics="moving"), DEFAULTS["val_split"], args.seed,
                               label=f"{name}, {optimizer} at {rate if rate else 'its default rate'}")
            for name in ("lenet", "lenet_fc_bn2") for optimizer, rate in runs]
    rows = [None] * len(plan)

    def record(index, done):
        training, result = plan[index], done.result
        settings, has_norm = training.settings, training.name != "lenet"
        # A diverged run (run_model stops it at its first non-finite loss)
        # has no test figures.
        diverged = result.diverged is not None
        optimizer = models_handling.make_optimizer(settings.optimizer, settings.learning_rate)
        rate_used = float(f"{float(keras.ops.convert_to_numpy(optimizer.learning_rate)):.6g}")
        precise = result.test_accuracy if diverged or not has_norm else accuracy_of(
            with_precise_statistics(done.load_model(), splits.x_train, settings), splits.x_test, splits.y_test,
            1000)[0]
        rows[index] = {
            "model": training.name, "optimizer": settings.optimizer, "learning_rate": rate_used,
            "test_accuracy": precise, "test_accuracy_moving": result.test_accuracy,
            "test_loss_moving": result.test_loss, "diverged": diverged,
        }
        if diverged:
            print(f"  {training.name} {settings.optimizer} lr {rate_used:g}: diverged at epoch "
                  f"{result.diverged['epoch']}", flush=True)
        else:
            print(f"  {training.name} {settings.optimizer} lr {rate_used:g}: test accuracy {precise:.4f}"
                  + (f" (precise), {result.test_accuracy:.4f} (moving)" if has_norm else ""), flush=True)
        write_rows(study_dir(args, "lr") / "lr.csv", [row for row in rows if row])  # kept if interrupted

    run_trainings(args, plan, data, record)

    folder = study_dir(args, "lr")
    sgd_rows = [row for row in rows if row["optimizer"] == "sgd"]
    references = {
        f"{row['model']}, {row['optimizer']} at its default rate {row['learning_rate']:g}": row["test_accuracy"]
        for row in rows if row["optimizer"] != "sgd"
    }
    visualizations.plot_learning_rates(sgd_rows, references, folder / "lr.png")
    summary = {"epochs": args.epochs, "seed": args.seed, "runs": rows}
    write_summary(folder, summary)
    return summary


# ---------------------------------------------------------------- window


class BatchStatisticsAtInference(BatchNorm):
    """The earlier project's inference rule, kept for this study only: normalize
    each predicted batch with its own statistics, so that a prediction depends
    on the other images in its batch."""

    def call(self, inputs, training=None):
        if training:
            return super().call(inputs, training)
        mean, variance = batch_statistics(inputs)
        return normalize(inputs, mean, variance, self.gamma, self.beta, self.epsilon)


class EarlierProjectLeNet5(LeNet5):
    def _make_norm(self, name):
        return BatchStatisticsAtInference(epsilon=self.epsilon, window_size=self.window_size, name=name)


def with_last_batches(model, window_size):
    """`model` as if trained with `window_size`: its statistics, the average of the
    last `window_size` training batches recorded by `model` (whose window must
    have held every batch of the run)."""
    copy = rebuild(model, window_size)
    for name, norm in model.norm.items():
        recorded = int(norm.recorded_batches.numpy())
        if recorded > norm.window_size:
            raise ValueError("the source model's window wrapped; train it with a longer window")
        first = max(0, recorded - window_size)
        kept = recorded - first
        target = copy.norm[name]
        target.mean_window.assign(np.concatenate(
            [norm.mean_window.numpy()[first:recorded], target.mean_window.numpy()[kept:]]))
        target.variance_window.assign(np.concatenate(
            [norm.variance_window.numpy()[first:recorded], target.variance_window.numpy()[kept:]]))
        target.recorded_batches.assign(kept)
    return copy


def window(args):
    """Test accuracy of lenet_fc_bn2 against the inference window under both
    statistics rules, and against the inference batch size, for our rules and
    for the earlier project's."""
    splits = load_splits(args, args.seed)
    steps_per_epoch = math.ceil(len(splits.x_train) / DEFAULTS["batch_size"])
    whole_run = steps_per_epoch * args.epochs
    # Training does not depend on the window or the rule (it normalizes with
    # batch statistics), so one `moving` run with a window holding every batch
    # gives every smaller moving window exactly, and the final weights for
    # every precise one.
    settings = base_settings(args, window_size=whole_run, bn_statistics="moving")
    model = models_handling.build_and_compile("lenet_fc_bn2", settings)
    train_and_report(f"lenet_fc_bn2 with a window of all {whole_run} batches", splits, settings, model=model)

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
        print(f"  window {label}: test accuracy {points[-1][1]:.4f} precise, "
              f"{window_points['moving: the last training steps'][-1][1]:.4f} moving")

    window_size = DEFAULTS["window_size"]
    rules = {
        f"ours, precise: {window_size} batches through the final weights":
            with_precise_statistics(model, splits.x_train, settings, window_size),
        f"ours, moving: the last {window_size} training batches": with_last_batches(model, window_size),
        "earlier project: the predicted batch's own statistics": rebuild(
            model, network_class=EarlierProjectLeNet5),
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
                np.array_equal(np.argmax(other, 1), np.argmax(first, 1)) for other in logits[rule]),
        }

    folder = study_dir(args, "window")
    write_rows(folder / "window.csv", rows)
    visualizations.plot_window_study(window_points, batch_points, folder / "window.png")
    summary = {
        "epochs": args.epochs, "seed": args.seed, "training_steps": whole_run,
        "window_size": {rule.split(":")[0]: {str(size): accuracy for size, accuracy in points}
                        for rule, points in window_points.items()},
        "inference_batch_size": {rule: {str(b): a for b, a in points} for rule, points in batch_points.items()},
        "movement_with_batch_size": {rule: spread(rule) for rule in rules},
    }
    write_summary(folder, summary)
    return summary


# ---------------------------------------------------------------- command line

# ---------------------------------------------------------------- replicas


def replicas(args):
    """lenet_fc_bn2 with its global batch split over 1, 2, 4, 8 replicas
    (logical CPU devices here; GPUs work the same), BN synchronized across
    them (global) or not (replica), all else equal."""
    uneven = [count for count in args.replicas if DEFAULTS["batch_size"] % count]
    if uneven:
        raise utils.UsageError(f"--replicas {' '.join(map(str, uneven))}: the global batch of "
                               f"{DEFAULTS['batch_size']} does not split evenly over that many; use divisors of it")
    cpus = distribution.logical_cpus(max(args.replicas))  # before anything runs on TensorFlow
    splits = load_splits(args, args.seed)
    folder, rows, points = study_dir(args, "replicas"), [], {rule: [] for rule in models_handling.BN_SYNC}
    for count in args.replicas:
        # One replica: both rules are the same computation, trained once.
        for rule in models_handling.BN_SYNC if count > 1 else ("global",):
            # XLA off throughout, as several devices need, so that only the
            # split differs between the runs.
            settings = base_settings(args, devices=count, bn_sync=rule, jit_compile=False)
            with distribution.mirrored_cpus(cpus[:count]).scope() if count > 1 else contextlib.nullcontext():
                print(f"  {count} replica(s) of {DEFAULTS['batch_size'] // count} images, --bn_sync {rule}:", flush=True)
                result = train_and_report("lenet_fc_bn2", splits, settings)
            for row_rule in models_handling.BN_SYNC if count == 1 else (rule,):
                rows.append({"replicas": count, "batch_per_replica": DEFAULTS["batch_size"] // count,
                             "bn_sync": row_rule, "test_accuracy": result.test_accuracy,
                             "final_val_accuracy": result.history["val_accuracy"][-1],
                             "train_seconds": round(result.train_seconds, 1)})
                points[row_rule].append((count, result.test_accuracy))
            write_rows(folder / "replicas.csv", rows)  # kept if the study is interrupted
    visualizations.plot_replicas(points, DEFAULTS["batch_size"], folder / "replicas.png")
    summary = {"epochs": args.epochs, "seed": args.seed, "global_batch": DEFAULTS["batch_size"], "runs": rows}
    write_summary(folder, summary)
    return summary


STUDIES = {
    "keras_check": keras_check,
    "seeds": seeds,
    "figure1": figure1,
    "lr": learning_rates,
    "window": window,
    "replicas": replicas,
}
ABOUT = {
    "keras_check": "Hand-written BN against keras.layers.BatchNormalization in lenet_fc_bn2, "
                   "same initial weights and batches.",
    "seeds": "The variants over several seeds, under each statistics rule: mean and standard deviation bands.",
    "figure1": "The BN paper's Figure 1: percentiles of one F6 sigmoid's input during training.",
    "lr": "lenet and lenet_fc_bn2 with plain SGD at several learning rates, test accuracy under both "
          "statistics rules.",
    "window": "Test accuracy against the inference window (both statistics rules) and the inference batch size.",
    "replicas": "lenet_fc_bn2 with the global batch of 64 split over 1, 2, 4, 8 replicas, BN statistics "
                "synchronized (global) or per replica.",
}


def build_parser():
    parser = OneLineErrorParser(
        prog="studies.py",
        description="Studies of what batch normalization does to LeNet-5; each writes PNGs, a CSV and "
        "summary.json into RESULTS_DIR/NAME/.",
    )
    names = parser.add_subparsers(dest="study", required=True, metavar="NAME",
                                  parser_class=OneLineErrorParser)

    def study(name):
        sub = names.add_parser(name, help=ABOUT[name], description=ABOUT[name],
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        sub.add_argument("--data", default=DEFAULTS["data"], help="as main.py --data: a .npz or IDX folder; "
                         "None downloads --dataset with Keras")
        sub.add_argument("--dataset", default=DEFAULTS["dataset"], choices=["mnist", "fashion_mnist"],
                         help="what Keras downloads when --data is None")
        sub.add_argument("--epochs", type=int_up_to(LIMITS["epochs"]), default=DEFAULTS["epochs"],
                         help="passes over the training split, for every network the study trains")
        sub.add_argument("--results_dir", default="results/studies", help="the study writes into RESULTS_DIR/NAME/")
        sub.add_argument("--verbose", type=int, choices=[0, 1, 2], default=DEFAULTS["verbose"],
                         help="Keras's training output: 0 silent, 1 progress bar, 2 one line per epoch")
        sub.add_argument("--jit_compile", type=auto_or_switch, default=DEFAULTS["jit_compile"],
                         help="as main.py --jit_compile: 1 XLA, 0 TensorFlow's kernels, auto the faster")
        sub.add_argument("--jobs", type=auto_or_int_up_to(LIMITS["jobs"]), default=DEFAULTS["jobs"],
                         help="as main.py --jobs: trainings side by side in worker processes; auto: the "
                         "machine's cores, at most one per training; 1: one after the other in this process")
        sub.add_argument("--cluster", default=DEFAULTS["cluster"],
                         help="as main.py --cluster: a Dask scheduler's address; the trainings run on its workers")
        if name != "seeds":
            sub.add_argument("--seed", type=int_up_to(LIMITS["seed"], low=0), default=DEFAULTS["seed"],
                             help="fixes the split, the initial weights and the shuffling")
        return sub

    def statistics_rule(sub):
        sub.add_argument("--bn_statistics", choices=models_handling.BN_STATISTICS,
                         default=DEFAULTS["bn_statistics"], help="as main.py --bn_statistics")

    statistics_rule(study("keras_check"))
    sub = study("seeds")
    sub.add_argument("--rules", nargs="+", choices=models_handling.BN_STATISTICS,
                     default=list(models_handling.BN_STATISTICS), metavar="RULE",
                     help="the --bn_statistics rules to train under (precise, moving)")
    sub.add_argument("--seeds", type=int_up_to(LIMITS["seed"], low=0), nargs="+", default=[0, 1, 2],
                     help="each fixes the split, the initial weights and the shuffling of one run")
    sub.add_argument("--models", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="MODEL",
                     help="which of the five variants to train")
    sub = study("figure1")
    sub.add_argument("--every", type=int_up_to(LIMITS["steps"]), default=20,
                     help=f"measure every this many training steps (1 to {LIMITS['steps']})")
    sub.add_argument("--unit", type=int_up_to(F6_UNITS - 1, low=0), default=0,
                     help=f"which of F6's {F6_UNITS} units to follow (0 to {F6_UNITS - 1})")
    sub.add_argument("--probe_images", type=int_up_to(LIMITS["images"]), default=1000,
                     help="how many (fixed) validation images the percentiles are taken over "
                     f"(1 to {LIMITS['images']}; the whole validation split at most)")
    sub.add_argument("--target", type=float_up_to(1.0), default=0.9,
                     help="report the first step at which test accuracy reaches this (up to 1)")
    statistics_rule(sub)
    sub = study("lr")
    sub.add_argument("--rates", type=float_up_to(LIMITS["learning_rate"]), nargs="+", default=[0.01, 0.1, 1.0, 10.0],
                     help="SGD learning rates; the default optimizer at its own rate is always added")
    sub = study("window")
    sub.add_argument("--windows", type=int_up_to(LIMITS["window_size"]), nargs="+", default=[1, 5, 50, 500],
                     help="window sizes; the whole run's number of training steps is always added")
    sub.add_argument("--inference_batch_sizes", type=int_up_to(LIMITS["batch_size"]), nargs="+", default=[1, 10, 100, 1000],
                     help="how many test images each rule predicts at a time")
    sub = study("replicas")
    sub.add_argument("--replicas", type=int_up_to(LIMITS["devices"]), nargs="+", default=[1, 2, 4, 8],
                     help="replica counts to split the global batch of 64 over (each must divide 64)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    data = args.data or f"keras.datasets.{args.dataset}"
    print(f"study {args.study}: {ABOUT[args.study]}", flush=True)
    print(f"data {data}, {args.epochs} epochs per training run; results into {study_dir(args, args.study)}/",
          flush=True)
    try:
        STUDIES[args.study](args)
    except utils.UsageError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: seeds and lr keep the CSV of every run that finished; the other studies "
              "write their files only when they end", file=sys.stderr)
        return 130
    print(f"written to {study_dir(args, args.study)}/")
    return 0


if __name__ == "__main__":
    # Run as the module `studies`, not as __main__, so that what a training
    # takes to a worker process (a probe, a builder) is found there by name.
    import studies

    sys.exit(studies.main())
