"""The `precise` statistics rule, in one place: what fills BN's inference
window, and when.

At the end of every epoch, before that epoch's validation, every BN layer's
window is refilled from `window_size` training mini-batches passed through the
network as it now is, every weight frozen: the paper's Algorithm 2, lines 9-10
(statistics of the trained network), which Wu and Johnson (2021, section 3)
call PreciseBN. The other rule, `moving`, keeps whatever the last training
steps recorded and needs nothing here.

The training (models_handling.train, through PreciseStatistics) and the
studies (with_precise_statistics, figure1's probe through refill) all call
this module.
"""

import contextlib
from dataclasses import replace

import keras
import numpy as np

from lenet import BatchNorm, rebuild
from training.callbacks import restored_afterwards


def batch_norms(model):
    """`model`'s batch-normalization layers, ours and Keras's (not GroupNorm
    or LayerNorm, which keep no statistics)."""
    return [norm for norm in model.norm.values() if isinstance(norm, BatchNorm | keras.layers.BatchNormalization)]


def applies(model, config):
    """Whether the rule refills `model`: under `precise`, and only where there is BN."""
    return config.bn_statistics == "precise" and bool(batch_norms(model))


def refill_batches(images, batch_size, count, seed, draw):
    """`count` mini-batches of `batch_size` training images for a refill.

    Drawn without replacement (from fresh permutations when a split holds fewer
    than count x batch_size images) by a generator seeded with the run's seed
    and `draw` (the epoch, or figure1's step), so a run's refills are
    repeatable and differ between draws. The training shuffle is not touched.
    """
    rng = np.random.default_rng([seed, draw])
    batch_size = min(batch_size, len(images))
    passes = -(-count * batch_size // len(images))
    order = np.concatenate([rng.permutation(len(images)) for _ in range(passes)])
    return [images[order[start : start + batch_size]] for start in range(0, count * batch_size, batch_size)]


def refill(model, images, config, draw):
    """Refill every BN layer's inference statistics from `config.window_size`
    batches of `images` passed through `model`'s current weights."""
    refill_statistics(model, refill_batches(images, config.batch_size, config.window_size, config.seed, draw))


def refill_statistics(model, image_batches):
    """Algorithm 2, lines 9-10: inference statistics of the network as it is now.

    Each batch passes through `model` in training mode, so every BN layer
    normalizes with that batch's statistics, exactly as in training, and
    records them; no optimizer runs, so no trainable weight changes. Our
    layers' windows then hold these batches and nothing older (the last
    `window_size` of them, if more are given); Keras's layers' moving averages
    become these batches' plain average.
    """
    refilled = [norm for norm in batch_norms(model) if norm.trainable]  # a frozen layer keeps its own
    ours = [norm for norm in refilled if isinstance(norm, BatchNorm)]
    keras_norms = [norm for norm in refilled if not isinstance(norm, BatchNorm)]
    for norm in ours:
        norm.empty_window()
    # At momentum 0 Keras's layer stores each batch's statistics as they are;
    # they are averaged here.
    momenta = [norm.momentum for norm in keras_norms]
    sums = [[0.0, 0.0] for _ in keras_norms]
    try:
        for norm in keras_norms:
            norm.momentum = 0.0
        for images in image_batches:
            model.record_statistics(images)
            for total, norm in zip(sums, keras_norms, strict=True):
                total[0] += norm.moving_mean.numpy()
                total[1] += norm.moving_variance.numpy()
    finally:
        for norm, momentum in zip(keras_norms, momenta, strict=True):
            norm.momentum = momentum
    for (mean_sum, variance_sum), norm in zip(sums, keras_norms, strict=True):
        norm.moving_mean.assign(mean_sum / len(image_batches))
        norm.moving_variance.assign(variance_sum / len(image_batches))


@contextlib.contextmanager
def as_the_rule_predicts(model, images, config, draw):
    """Inside the block `model` predicts with the statistics its rule gives
    it now (under `precise`, refilled from its current weights with draw
    `draw`); afterwards every BN layer's statistics are as they were, so a
    measurement taken in the middle of training (figure1's probe, the
    validation curve) changes nothing the run reports."""
    with restored_afterwards(variable for norm in model.norm.values() for variable in norm.non_trainable_variables):
        if applies(model, config):
            refill(model, images, config, draw)
        yield model


class PreciseStatistics(keras.callbacks.Callback):
    """The rule during training: refill at the end of every epoch, before
    that epoch's validation.

    Keras's fit validates before callbacks see `on_epoch_end`, so the refill
    runs after the epoch's last training step (`params["steps"]` tells which;
    with several steps per call Keras numbers a call by its last step as if
    it were full, which can pass the epoch's end); `on_epoch_end` refills
    only where the number of steps was unknown.
    """

    def __init__(self, train_images, config):
        super().__init__()
        self.train_images, self.config = train_images, config

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.refilled = epoch, False

    def on_train_batch_end(self, batch, logs=None):
        steps = self.params.get("steps")
        if steps and batch + 1 >= steps and not self.refilled:
            self.refill_now()

    def on_epoch_end(self, epoch, logs=None):
        if not self.refilled:
            self.refill_now()

    def refill_now(self):
        refill(self.model, self.train_images, self.config, self.epoch)
        self.refilled = True


def with_precise_statistics(model, images, config, window_size=None):
    """A copy of `model` (ours) whose window of `window_size` rows (default:
    the run's) is refilled from its final weights, as the rule does after the
    last epoch (the same batches, at the same window size)."""
    window_size = window_size or config.window_size
    copy = rebuild(model, window_size)
    refill(copy, images, replace(config, window_size=window_size), config.epochs - 1)
    return copy
