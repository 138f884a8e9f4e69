"""The Keras callbacks a training runs with, each doing one thing:

- EpochOrder: each epoch's order of images, from the seed and the epoch alone;
- StopOnDivergence: stop at the first step whose loss is not finite;
- ResumableTraining: back up every finished epoch, and resume from it;
- BNWindowHistograms (with Keras's TensorBoard in tensorboard_callbacks):
  BN's inference statistics in TensorBoard.

The `precise` rule's callback is in precise.py, with the rest of that rule.
"""

import contextlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import tensorflow as tf

import utils
from common import files
from common.records import HISTORY_KEYS
from lenet import BatchNorm


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
        if self.epoch not in self.orders:  # its own stream: precise.refill_batches draws from [seed, epoch]
            self.orders = {self.epoch: np.random.default_rng([self.seed, self.epoch, 1]).permutation(self.count)}
        return self.orders[self.epoch]


@contextlib.contextmanager
def restored_afterwards(variables):
    """Whatever the block does to `variables` (a model's weights, BN's
    windows and counters) undone when it ends: a probe or a measurement
    leaves the run as it was. The one way this project saves and restores."""
    variables = list(variables)
    saved = [variable.numpy() for variable in variables]
    try:
        yield
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)


class NonFiniteLossWatch:
    """Numbers a model's training steps and keeps the first whose loss is not
    finite, inside the compiled step (around the model's compute_loss).
    With several steps per call into TensorFlow (steps_per_execution),
    callbacks see only each call's last step and the epoch's running mean
    loss, which stays non-finite once one step's loss was: this is what lets
    StopOnDivergence still name the first such step."""

    def __init__(self, model):
        self.steps = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.first = tf.Variable(0, dtype=tf.int64, trainable=False)  # 0: none yet
        compute_loss = model.compute_loss

        def watched(*args, **kwargs):
            loss = compute_loss(*args, **kwargs)
            if kwargs.get("training", True):  # a training step (Keras passes training=False when it validates)
                step = self.steps.assign_add(1)
                bad = tf.logical_and(tf.logical_not(tf.math.is_finite(loss)), tf.equal(self.first, 0))
                self.first.assign(tf.where(bad, step, self.first))
            return loss

        model.compute_loss = watched
        model.nonfinite_loss_watch = self

    def reset(self):
        self.steps.assign(0)
        self.first.assign(0)


class StopOnDivergence(keras.callbacks.Callback):
    """Stop training at the first step whose loss is not finite, and remember
    where (Keras's TerminateOnNaN stops too, but only prints the place). The
    step is the model's NonFiniteLossWatch's where it has one (so also with
    several steps per call), else the batch Keras reports."""

    def __init__(self):
        super().__init__()
        self.at = None

    def on_train_begin(self, logs=None):
        self.watch = getattr(self.model, "nonfinite_loss_watch", None)
        if self.watch:
            self.watch.reset()  # from the steps that built the training state

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.steps_before = int(self.watch.steps.numpy()) if self.watch else 0

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            first = int(self.watch.first.numpy()) if self.watch else 0
            step = first - self.steps_before if first else batch + 1
            self.at = {"epoch": self.epoch + 1, "step": step, "loss": str(float(loss))}
            self.model.stop_training = True


class ResumableTraining(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore, and what it leaves out for an interrupted
    model to end exactly as an uninterrupted one would.

    Keras saves the weights, the optimizer's state and BN's windows after
    every epoch, and restores them (and the epoch to start from) when fit
    begins. Here the finished epochs' history and training seconds are kept
    beside them; each epoch's order of images depends only on the seed and
    the epoch (EpochOrder), so nothing else needs replaying. The backup
    carries the run's identity (harness.results_folder.run_identity): only a run
    with the same settings and data resumes from it, and only with
    `resume`; any other start removes it. It stays when training ends, until
    the model's results are written (results_folder.remove_backup). A
    backup that cannot be read is set aside (moved beside it, never deleted)
    and the model trains from its first epoch.
    """

    def __init__(self, backup_dir, identity, resume):
        self.folder = Path(backup_dir)
        self.identity_path, self.progress_path = self.folder / "run.json", self.folder / "progress.json"
        # What the backed-up epochs recorded, read once: on_train_begin takes
        # the restored epochs' history and seconds from it.
        self.progress = {}
        if self.folder.exists() and resume:
            self.progress = self.read_backup(identity)
        if self.folder.exists() and not self.progress:
            with files.writing(self.folder):
                shutil.rmtree(self.folder)
        super().__init__(str(self.folder), double_checkpoint=True, delete_checkpoint=False)
        self.identity = identity
        self.history, self.seconds = {key: [] for key in HISTORY_KEYS}, []  # per epoch, since the start

    def read_backup(self, identity):
        """The backup's progress if it was left by a run of `identity` and
        every file of it reads whole (the weights too); else {}: a backup of
        other settings or data is said and left to be removed, one that
        cannot be read is set aside, and a line says so."""
        try:
            if json.loads(self.identity_path.read_text()) != identity:
                print(f"{self.folder} was left by a run with other settings or data: starting afresh")
                return {}
            progress = json.loads(self.progress_path.read_text())
            if not all(key in progress.get("history", {}) for key in HISTORY_KEYS) or "seconds" not in progress:
                raise ValueError("progress.json lacks the history")
            json.loads((self.folder / "training_metadata.json").read_text())
            with h5py.File(self.folder / "latest.weights.h5", "r") as weights:
                weights.visititems(lambda name, item: item[()] if isinstance(item, h5py.Dataset) else None)
        except (OSError, ValueError, KeyError, AttributeError) as error:
            aside = self.folder.with_name(f"{self.folder.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
            with files.writing(aside):
                os.replace(self.folder, aside)
            print(
                f"{self.folder.name}: its backup {self.folder}/ cannot be read ({type(error).__name__}: "
                f"{utils.one_line(error)}); set aside as {aside}/; training from epoch 1",
                flush=True,
            )
            return {}
        return progress

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
        with files.writing(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
        # Keras writes the weights with h5py, which a full disk crashes: not started without room
        # for them and for the copy of the last ones it keeps (double_checkpoint).
        latest = self.folder / "latest.weights.h5"
        files.check_space(self.folder, files.saved_size(self.model) + (latest.stat().st_size if latest.exists() else 0))
        files.write_text(self.identity_path, json.dumps(self.identity) + "\n")
        files.write_text(self.progress_path, json.dumps({"history": self.history, "seconds": self.seconds}) + "\n")
        with files.writing(self.folder / "latest.weights.h5"):
            super().on_epoch_end(epoch, logs)  # then the weights: never ahead of the history


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
                if not isinstance(norm, BatchNorm | keras.layers.BatchNormalization):
                    continue  # GroupNorm and LayerNorm keep no statistics
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
