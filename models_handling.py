"""Build a named model, compile, train and evaluate it, and write its results."""

import contextlib
import csv
import io
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import visualizations
from jit_choice import STEPS, JitChoice, choose_jit_compile
from lenet import BatchNorm, build_lenet, describe, refill_statistics
from utils import UsageError, atomic_path, file_lock, seeded, write_text

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
SUMMARY_FILE = "summary.json"
BACKUP_FOLDER = "backup"  # <results_dir>/backup/<model>/: an unfinished model's last finished epoch
# What fills BN's inference window: "precise" refills it at every epoch's end
# from training batches passed through the trained weights (Algorithm 2);
# "moving" keeps the last training steps' statistics.
BN_STATISTICS = ("precise", "moving")
# Keras dtype policies a run may train under: float32 throughout, or float16 /
# bfloat16 computation with float32 variables (BN's statistics stay float32).
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# With several replicas (tf.distribute), what BN normalizes each replica's
# shard with: the global batch's statistics, or the shard's own.
BN_SYNC = ("global", "replica")


@dataclass(frozen=True)
class Settings:
    """What a training run depends on, besides the data and the model's name."""

    batch_size: int
    output_size: int
    epochs: int
    optimizer: str
    learning_rate: float | None  # None: the optimizer's own default
    epsilon: float
    window_size: int
    verbose: int
    seed: int
    jit_compile: bool | str = "auto"  # True: XLA; False: TensorFlow's kernels; "auto": the faster (jit_choice)
    bn_statistics: str = "precise"  # one of BN_STATISTICS
    precision: str = "float32"  # one of PRECISIONS
    devices: int = 1  # replicas the global batch is split across (distribution.make_strategy)
    bn_sync: str = "global"  # one of BN_SYNC
    inference_batch_size: int = 1024  # validation and test; inference does not depend on batch companions

    @classmethod
    def from_mapping(cls, mapping):
        """The settings named in `mapping`, a dict shaped like main.py's
        DEFAULTS (or parsed arguments); other keys are ignored."""
        values = {name.name: mapping[name.name] for name in fields(cls)}
        jit_compile = values["jit_compile"]
        return cls(**{**values, "jit_compile": jit_compile if jit_compile == "auto" else bool(jit_compile)})


@dataclass
class ModelResult:
    name: str
    history: dict  # per-epoch lists under HISTORY_KEYS
    test_loss: float
    test_accuracy: float
    train_seconds: float
    trainable_parameters: int
    model: keras.Model | None = field(default=None, repr=False)  # the trained model, to save
    diverged: dict | None = None  # {"epoch", "step", "loss"} where the loss stopped being finite
    jit_choice: dict | None = None  # with jit_compile "auto": the path chosen and the timings (JitChoice.record)
    model_file: bytes | None = field(default=None, repr=False)  # or the trained model as .keras bytes (a worker's)
    where: dict | None = None  # where it trained: host, process, threads, and jobs or cluster (trainings.py)


def make_optimizer(name, learning_rate=None):
    """A fresh Keras optimizer from its name ("adam", "sgd", ...)."""
    try:
        optimizer_class = type(keras.optimizers.get(name))
        if learning_rate is None:
            return optimizer_class()
        return optimizer_class(learning_rate=learning_rate)
    except Exception:
        raise UsageError(
            f"--optimizer {name}: not a Keras optimizer; use a name such as adam, sgd, rmsprop, "
            "adamw, nadam or adagrad"
        ) from None


def compile_model(model, settings, steps_per_execution=1):
    """Compile with the run's optimizer and logits-based cross-entropy.

    Runs keep one training step per call into TensorFlow: with several
    (Keras's steps_per_execution, measured by bench.py) callbacks see only
    every Nth step, so the divergence stop could not name its step and
    figure1's probe could not measure where it is asked to."""
    model.compile(
        optimizer=make_optimizer(settings.optimizer, settings.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        # "auto" decides at the start of training (fit); until then, TensorFlow's kernels.
        jit_compile=settings.jit_compile is True,
        steps_per_execution=steps_per_execution,
    )
    return model


def build_and_compile(name, settings):
    """The named model, seeded, built under the run's precision, compiled.

    Keras's dtype policy is global and read when layers are made, so it is set
    here for every model, float32 included, so that one run's choice never
    leaks into the next. Under mixed_float16 Keras's compile wraps the
    optimizer in a LossScaleOptimizer by itself.
    """
    keras.mixed_precision.set_global_policy(settings.precision)
    with seeded(settings.seed):
        model = build_lenet(name, settings.output_size, settings.epsilon, settings.window_size,
                            synchronized=settings.bn_sync == "global")
    return compile_model(model, settings)


class EpochOrder(keras.callbacks.Callback):
    """The order in which an epoch visits the training images: a permutation
    drawn from the run's seed and the epoch's number, which Keras announces at
    each epoch's start. An epoch's order thus depends on nothing that ran
    before it: a run resumed at epoch k (ResumableTraining) draws what an
    uninterrupted one draws there. (tf.data's own reshuffling draws a new
    seed each time an iterator is made, and Keras makes more iterators than
    it uses, so its orders depend on Keras's internals.)"""

    def __init__(self, count, seed):
        super().__init__()
        self.count, self.seed, self.epoch, self.orders = count, seed, 0, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def order(self):
        if self.epoch not in self.orders:  # its own stream: refill_batches draws from [seed, epoch]
            self.orders = {self.epoch: np.random.default_rng([self.seed, self.epoch, 1]).permutation(self.count)}
        return self.orders[self.epoch]


def batches(images, labels, batch_size, order=None):
    """A tf.data pipeline of (images, labels) mini-batches, the last one short,
    in the order of the images or, with `order` (an EpochOrder), in the
    current epoch's order.

    The pipeline batches positions and each batch is gathered from the numpy
    arrays, which stay outside TensorFlow: copied whole into a tensor
    (Dataset.from_tensors) they cost a second copy of the data in memory
    (3.2 GB for 800,000 images) and risk TensorFlow's 2 GB limit on graph
    constants. tf.data's autotuner is off: on a 2-core machine its background
    work took a core from training for whole epochs at a time, halving
    throughput (measured with bench.py).
    """

    def gather(positions):
        chosen = positions if order is None else order.order()[positions]
        return images[chosen], labels[chosen]

    def gather_tensors(positions):
        image_batch, label_batch = tf.numpy_function(
            gather, [positions], (tf.as_dtype(images.dtype), tf.as_dtype(labels.dtype)), stateful=order is not None,
        )
        return tf.ensure_shape(image_batch, (None, *images.shape[1:])), tf.ensure_shape(label_batch, (None,))

    options = tf.data.Options()
    options.autotune.enabled = False
    return tf.data.Dataset.range(len(images)).batch(batch_size).map(gather_tensors).with_options(options).prefetch(2)


def fit(model, images, labels, settings, epochs, validation_data=None, callbacks=()):
    """Keras's fit over mini-batches in a seeded order that changes every
    epoch (EpochOrder), validating on `validation_data` (images, labels)
    after every epoch (in batches of settings.inference_batch_size).

    With `jit_compile` "auto", the model's first fit starts by choosing the
    faster compile path on a few batches of `images` (jit_choice), printed
    and kept as `model.jit_choice`."""
    build_training_state(model, images[:1], labels[:1])
    if settings.jit_compile == "auto" and getattr(model, "jit_choice", None) is None:
        model.jit_choice = choose_jit_compile(model, timing_batches(images, labels, settings.batch_size))
        print(f"{model.name}: {model.jit_choice.describe()}")
    if validation_data is not None:
        validation_data = batches(*validation_data, settings.inference_batch_size)
    order = EpochOrder(len(images), settings.seed)
    return model.fit(
        batches(images, labels, settings.batch_size, order),
        epochs=epochs,
        validation_data=validation_data,
        shuffle=False,  # the pipeline shuffles
        verbose=settings.verbose,
        callbacks=[order, *callbacks],
    )


def build_training_state(model, images, labels):
    """Make the optimizer's slots and the loss's and metrics' state now,
    from `images` and `labels` (one example is enough), leaving them as a
    fresh compile would.

    Keras otherwise makes them while it traces the training step, and
    TensorFlow traces a function that made variables a second time: building
    them first halves the tracing a model's first epoch waits for (about
    1.5 s of 3 for lenet_bn2 on 2 cores). Nothing trains: the network runs in
    inference mode and the metrics are reset. With several replicas Keras
    builds this state itself before tracing (its symbolic build)."""
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        return
    model.optimizer.build(model.trainable_variables)
    predictions = model(images, training=False)
    model.compute_loss(images, labels, predictions)
    model.compute_metrics(images, labels, predictions, sample_weight=None)
    model.reset_metrics()


def timing_batches(images, labels, batch_size):
    """Up to jit_choice.STEPS full training batches (a short one only when
    the images do not fill one), in the order of the images."""
    full = min(len(images), STEPS * batch_size) // batch_size * batch_size or len(images)
    return batches(images[:full], labels[:full], batch_size)


def refill_batches(images, batch_size, count, seed, epoch):
    """`count` mini-batches of `batch_size` training images for a statistics refill.

    Drawn without replacement (from fresh permutations when a split holds fewer
    than count x batch_size images) by a generator seeded with the run's seed
    and the epoch, so a run's refills are repeatable and differ between epochs.
    The training shuffle is not touched.
    """
    rng = np.random.default_rng([seed, epoch])
    batch_size = min(batch_size, len(images))
    passes = -(-count * batch_size // len(images))
    order = np.concatenate([rng.permutation(len(images)) for _ in range(passes)])
    return [images[order[start:start + batch_size]] for start in range(0, count * batch_size, batch_size)]


def refill(model, images, settings, epoch):
    """Refill every BN layer's inference statistics from `window_size` batches of
    `images` passed through `model`'s current weights (lenet.refill_statistics)."""
    refill_statistics(model, refill_batches(images, settings.batch_size, settings.window_size, settings.seed, epoch))


class StopOnDivergence(keras.callbacks.Callback):
    """Stop training at the first step whose loss is not finite, and remember
    where (Keras's TerminateOnNaN stops too, but only prints the place)."""

    def __init__(self):
        super().__init__()
        self.at = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.at = {"epoch": self.epoch + 1, "step": batch + 1, "loss": str(float(loss))}
            self.model.stop_training = True


def run_identity(settings, record):
    """What a model's result depends on, in the form JSON holds it: its
    settings (a dict; `verbose` aside), the data by content (by name for a
    Keras download) and the validation split. `record` is main.py's run
    record or a summary.json entry."""
    identity = {
        "settings": {key: value for key, value in settings.items() if key != "verbose"},
        "data": record.get("data_sha256") or record.get("data"),
        "val_split": record.get("val_split"),
    }
    return json.loads(json.dumps(identity))


class ResumableTraining(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore, and what it leaves out for an interrupted
    model to end exactly as an uninterrupted one would.

    Keras saves the weights, the optimizer's state and BN's windows after
    every epoch, and restores them (and the epoch to start from) when fit
    begins. Here the finished epochs' history and training seconds are kept
    beside them; each epoch's order of images depends only on the seed and
    the epoch (EpochOrder), so nothing else needs replaying. The backup
    carries the run's identity (run_identity): only a run with the same
    settings and data resumes from it, and only with `resume`; any other
    start removes it. It stays when training ends; `remove` it once the
    model's results are written.
    """

    def __init__(self, backup_dir, identity, resume):
        self.folder = Path(backup_dir)
        identity_path, self.progress_path = self.folder / "run.json", self.folder / "progress.json"
        if self.folder.exists():
            kept = resume and identity_path.exists() and json.loads(identity_path.read_text()) == identity
            if resume and not kept:
                print(f"{self.folder} was left by a run with other settings or data: starting afresh")
            if not kept:
                shutil.rmtree(self.folder)
        super().__init__(str(self.folder), double_checkpoint=True, delete_checkpoint=False)
        self.identity, self.identity_path = identity, identity_path
        # What the backed-up epochs recorded, read once: on_train_begin takes
        # the restored epochs' history and seconds from it.
        self.progress = json.loads(self.progress_path.read_text()) if self.progress_path.exists() else {}
        # With jit_compile "auto", the path the backed-up epochs ran on: a
        # resumed run continues on it, as an uninterrupted run would have.
        choice = self.progress.get("jit_choice")
        self.jit_choice = JitChoice.from_record(choice) if choice else None
        self.history, self.seconds = {key: [] for key in HISTORY_KEYS}, []  # per epoch, since the start

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        restored = self.model._initial_epoch or 0  # where BackupAndRestore tells fit to start
        if restored:
            self.history = {key: self.progress["history"][key][:restored] for key in HISTORY_KEYS}
            self.seconds = self.progress["seconds"][:restored]
            print(f"{self.model.name}: resuming after epoch {restored} from {self.folder}/")
        self.earlier_seconds = self.seconds[-1] if self.seconds else 0.0
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        for key in HISTORY_KEYS:
            self.history[key].append(float(logs[key]))
        self.seconds.append(self.earlier_seconds + time.perf_counter() - self.started)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text(self.identity_path, json.dumps(self.identity) + "\n")
        choice = getattr(self.model, "jit_choice", None)
        write_text(self.progress_path, json.dumps({"history": self.history, "seconds": self.seconds,
                                                   "jit_choice": choice.record() if choice else None}) + "\n")
        super().on_epoch_end(epoch, logs)  # then the weights: never ahead of the history

    def remove(self):
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.folder.parent.rmdir()  # the backup folder, once no model has one there


class PreciseStatistics(keras.callbacks.Callback):
    """The `precise` rule: refill BN's statistics at the end of every epoch,
    before that epoch's validation.

    Keras's fit validates before callbacks see `on_epoch_end`, so the refill
    runs after the epoch's last training step (`params["steps"]` tells which);
    `on_epoch_end` refills only where the number of steps was unknown.
    """

    def __init__(self, train_images, settings):
        super().__init__()
        self.train_images, self.settings = train_images, settings

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.refilled = epoch, False

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.params.get("steps"):
            self.refill_now()

    def on_epoch_end(self, epoch, logs=None):
        if not self.refilled:
            self.refill_now()

    def refill_now(self):
        refill(self.model, self.train_images, self.settings, self.epoch)
        self.refilled = True


class BNWindowHistograms(keras.callbacks.Callback):
    """TensorBoard histograms, once per epoch, of the inference statistics of
    every BN layer: the window's filled rows of means and variances (ours) or
    the moving mean and variance (Keras's), in <log_dir>/bn_statistics/."""

    def __init__(self, log_dir):
        super().__init__()
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "bn_statistics"))

    def on_epoch_end(self, epoch, logs=None):
        with self.writer.as_default():
            for name, norm in self.model.norm.items():
                if isinstance(norm, BatchNorm):
                    rows = int(norm.filled_rows())
                    means, variances = norm.mean_window[:rows], norm.variance_window[:rows]
                else:
                    means, variances = norm.moving_mean, norm.moving_variance
                tf.summary.histogram(f"{name}/mean", means, step=epoch + 1)
                tf.summary.histogram(f"{name}/variance", variances, step=epoch + 1)
        self.writer.flush()

    def on_train_end(self, logs=None):
        self.writer.close()


def tensorboard_callbacks(log_dir):
    """Keras's TensorBoard (per-epoch loss and accuracy, training and
    validation) and the BN statistics histograms, all under `log_dir`."""
    return [keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False), BNWindowHistograms(log_dir)]


def train(model, splits, settings, callbacks=()):
    """Fit on the training split, validating after every epoch; the history as plain lists."""
    if settings.bn_statistics == "precise" and model.norm:
        callbacks = [*callbacks, PreciseStatistics(splits.x_train, settings)]
    history = fit(
        model, splits.x_train, splits.y_train, settings, settings.epochs, (splits.x_val, splits.y_val), callbacks
    )
    return {key: [float(value) for value in history.history[key]] for key in HISTORY_KEYS}


def evaluate(model, images, labels, settings):
    """(loss, accuracy) on the given images, in inference mode."""
    loss, accuracy = model.evaluate(batches(images, labels, settings.inference_batch_size), verbose=0)
    return float(loss), float(accuracy)


def run_model(name, splits, settings, model=None, callbacks=(), backup=None):
    """Train and test one model: the named one, built and compiled here, or
    `model`, already compiled, reported under `name`. With `backup` (a
    ResumableTraining), every finished epoch is backed up, and a backed-up
    run continues from its last finished epoch."""
    if model is None:
        model = build_and_compile(name, settings)
    if backup is not None and backup.jit_choice is not None and settings.jit_compile == "auto":
        model.jit_choice = backup.jit_choice
        compile_model(model, replace(settings, jit_compile=backup.jit_choice.jit_compile))
        print(f"{name}: {backup.jit_choice.path()}, as chosen before the interruption")
    divergence = StopOnDivergence()
    start = time.perf_counter()
    history = train(model, splits, settings, [*([backup] if backup else []), *callbacks, divergence])
    seconds = time.perf_counter() - start
    if backup is not None:  # its history holds the restored epochs too, fit's only those it ran
        history = {key: list(backup.history[key]) for key in HISTORY_KEYS}
        seconds += backup.earlier_seconds
    # A diverged model has nothing to test: its weights are not numbers.
    test_loss, test_accuracy = (None, None) if divergence.at else evaluate(
        model, splits.x_test, splits.y_test, settings)
    trainable = sum(int(weight.numpy().size) for weight in model.trainable_weights)
    choice = getattr(model, "jit_choice", None)
    return ModelResult(name, history, test_loss, test_accuracy, seconds, trainable, model=model,
                       diverged=divergence.at, jit_choice=choice.record() if choice else None)


# ---------------------------------------------------------------- results


def read_summary(results_dir):
    """The results folder's summary: {model name: its latest result}."""
    path = Path(results_dir) / SUMMARY_FILE
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
        return summary
    except (OSError, ValueError) as error:
        raise UsageError(
            f"{path} is unreadable ({error}); move it away or choose another --results_dir"
        ) from None


def read_history(path):
    """A history CSV written by history_csv, as {key: per-epoch list}."""
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    return {key: [float(row[key]) for row in rows] for key in HISTORY_KEYS}


def history_csv(history):
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["epoch", *HISTORY_KEYS])
    for epoch, values in enumerate(zip(*(history[key] for key in HISTORY_KEYS)), start=1):
        writer.writerow([epoch, *(f"{value:.6f}" for value in values)])
    return rows.getvalue()


def save_results(result, results_dir, settings, run_record, plots=True):
    """Write one model's history CSV, its PNGs, the trained model
    (<name>.keras, BN windows included), its entry in summary.json, and the
    comparison PNGs of every model the summary holds.

    Each file is replaced in one step, so an interrupted run leaves every file
    whole. Entries of other models in summary.json are kept.
    """
    results_dir = Path(results_dir)
    write_text(results_dir / f"{result.name}_history.csv", history_csv(result.history))
    if result.model is not None or result.model_file is not None:
        with atomic_path(results_dir / f"{result.name}.keras") as temporary:
            if result.model is not None:
                result.model.save(temporary)
            else:
                temporary.write_bytes(result.model_file)
    if plots:
        outcome = (
            f"diverged at epoch {result.diverged['epoch']}, step {result.diverged['step']}" if result.diverged
            else f"test accuracy {result.test_accuracy:.4f}, test loss {result.test_loss:.4g}"
        )
        for metric in ("accuracy", "loss"):
            visualizations.plot_history(
                result.history, metric, f"{describe(result.name)}: {metric}\n{outcome}",
                results_dir / f"{result.name}_{metric}.png",
            )
    entry = {
        "test_accuracy": result.test_accuracy,
        "test_loss": result.test_loss,
        "diverged": result.diverged,
        "final_val_accuracy": None if result.diverged else result.history["val_accuracy"][-1],
        "epochs": len(result.history["loss"]),
        "train_seconds": round(result.train_seconds, 2),
        "trainable_parameters": result.trainable_parameters,
        "settings": asdict(settings),
        "jit_choice": result.jit_choice,
        "where": result.where,
        **run_record,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    summary = update_summary(results_dir, result.name, entry)
    save_comparison(results_dir, summary, plots)


def result_from_summary(results_dir, name, entry):
    """A model's result as summary.json and its history CSV hold it (for a
    model that a resumed sweep skips)."""
    history_path = Path(results_dir) / f"{name}_history.csv"
    history = read_history(history_path) if history_path.exists() else {key: [] for key in HISTORY_KEYS}
    return ModelResult(name, history, entry.get("test_loss"), entry.get("test_accuracy"),
                       entry.get("train_seconds", 0.0), entry.get("trainable_parameters"),
                       diverged=entry.get("diverged"))


def update_summary(results_dir, name, entry):
    """Set summary.json's entry for `name`, keeping every other entry, and
    return the summary as written. The read and the write happen under a file
    lock, so runs writing into one folder at once never lose each other's
    entries."""
    with file_lock(Path(results_dir) / SUMMARY_FILE):
        summary = read_summary(results_dir)
        summary[name] = entry
        write_text(Path(results_dir) / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def save_comparison(results_dir, summary, plots=True):
    """comparison_accuracy.png and comparison_loss.png of every model in
    `summary` whose history is in the folder, so that they never contradict
    summary.json: with fewer than two such models, or without plots, there
    are none."""
    results_dir = Path(results_dir)
    histories = {
        name: read_history(results_dir / f"{name}_history.csv")
        for name in summary if (results_dir / f"{name}_history.csv").exists()
    }
    for metric in ("accuracy", "loss"):
        path = results_dir / f"comparison_{metric}.png"
        if plots and len(histories) > 1:
            visualizations.plot_comparison(histories, metric, path)
        elif path.exists():
            path.unlink()
