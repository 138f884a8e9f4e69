"""The measurements the studies take while a network trains, as Keras
callbacks: each keeps its points and hands them back with report() (from
wherever the training ran, harness/executor.py). Each looks at every step,
so its training runs one step per call into TensorFlow (`every_step`)."""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from study.common import accuracy_of
from study.gradients import BatchLoss, internal_covariate_shift
from study.landscape import MULTIPLES, probe_point
from study.noisy_bn import LAYER, UNIT, relative_move
from training import precise
from training.callbacks import restored_afterwards


class StepProbe(keras.callbacks.Callback):
    """A measurement of the network before the first training step, every
    `every` steps after it, and after the last, as lists under the keys of
    `point`'s dict and "step" (`curve`). Each point is the network as it then
    is, with the statistics its rule gives it (training.precise.
    as_the_rule_predicts: under `precise` a refill from that step's weights,
    numbered by the step, and undone afterwards); the last point is the
    trained network exactly as the run tests it. So the run is left exactly
    as without the probe. Subclasses say what a point is (`point(model)`)."""

    every_step = True  # it looks at every training step: one step per call into TensorFlow (models_handling.fit)

    def __init__(self, train_images, config, every):
        super().__init__()
        self.train_images, self.config, self.every, self.step = train_images, config, every, 0
        self.curve = {"step": []}

    def point(self, model):
        raise NotImplementedError

    def measure(self, as_trained=False):
        """One point; `as_trained`: with the statistics the run ends with (no refill of its own)."""
        measuring = (
            contextlib.nullcontext(self.model)
            if as_trained
            else precise.as_the_rule_predicts(self.model, self.train_images, self.config, self.step)
        )
        with measuring as model:
            values = self.point(model)
        self.curve["step"].append(self.step)
        for key, value in values.items():
            self.curve.setdefault(key, []).append(value)

    def on_train_begin(self, logs=None):
        self.measure()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            self.measure()

    def on_train_end(self, logs=None):
        if self.curve["step"][-1] == self.step:  # measured with a refill of its own: measured again as tested
            for values in self.curve.values():
                values.pop()
        self.measure(as_trained=True)

    def report(self):
        """What comes back from where it trained (records.ModelResult.report)."""
        return self.curve


class ValidationCurve(StepProbe):
    """Validation accuracy every few training steps, as {"step": [...],
    "val_accuracy": [...]}: what steps to a target accuracy are read from.
    Costs one pass over the validation split per point."""

    def __init__(self, val_images, val_labels, train_images, config, every):
        super().__init__(train_images, config, every)
        self.val_images, self.val_labels = val_images, val_labels

    def point(self, model):
        return {
            "val_accuracy": accuracy_of(model, self.val_images, self.val_labels, self.config.inference_batch_size)[0]
        }


class SigmoidInputProbe(StepProbe):
    """The 15th, 50th and 85th percentiles of what one sigmoid of `layer`
    receives on fixed images, and the test accuracy, every few training steps
    (study.probes.StepProbe: inference mode, the rule's statistics)."""

    def __init__(self, probe_images, test_images, test_labels, layer, unit, every, train_images, config):
        super().__init__(train_images, config, every)
        self.probe_images, self.test_images, self.test_labels = probe_images, test_images, test_labels
        self.layer, self.unit = layer, unit

    def point(self, model):
        received = model.layer_outputs(self.probe_images, training=False)[self.layer][:, self.unit]
        percentiles = np.percentile(np.asarray(received), [15, 50, 85])
        return {
            "test_accuracy": accuracy_of(model, self.test_images, self.test_labels, 1000)[0],
            **{key: float(value) for key, value in zip(("p15", "p50", "p85"), percentiles)},
        }


class FreshBatchProbe(keras.callbacks.Callback):
    """A point every `every` training steps (and before the first), each on a
    fresh training batch (BatchLoss), as a list of dicts; the run's weights,
    BN's windows and the optimizer left exactly as they were. Subclasses say
    what a point is (`probe`)."""

    every_step = True  # one step per call into TensorFlow (models_handling.fit)

    def __init__(self, train_images, train_labels, batch_size, every, seed):
        super().__init__()
        self.images, self.labels, self.batch_size, self.every = train_images, train_labels, batch_size, every
        self.random, self.step, self.curve = np.random.default_rng(seed), 0, []

    def on_train_begin(self, logs=None):
        self.loss = BatchLoss(self.model)
        self.probe()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            self.probe()

    def fresh_batch(self):
        chosen = self.random.choice(len(self.images), self.batch_size, replace=False)
        self.loss.set_batch(self.images[chosen], self.labels[chosen])

    def report(self):
        return self.curve


class LandscapeProbe(FreshBatchProbe):
    """probe_point at each of MULTIPLES of the training's step."""

    def __init__(self, train_images, train_labels, batch_size, learning_rate, every, seed):
        super().__init__(train_images, train_labels, batch_size, every, [seed, 7])
        self.etas = [k * learning_rate for k in MULTIPLES]

    def probe(self):
        self.fresh_batch()
        with restored_afterwards(self.model.variables):
            self.curve.append({"step": self.step, **probe_point(self.loss, self.etas)})


class ShiftProbe(FreshBatchProbe):
    """The training accuracy of the batches since the last point (from
    Keras's running mean over the epoch), Definition 2.1's shift per layer,
    and F6's sigmoid inputs on fixed training images in training mode: one
    unit's percentiles, and every unit's relative_move since the last point."""

    def __init__(self, train_images, train_labels, probe_images, batch_size, learning_rate, every, seed):
        super().__init__(train_images, train_labels, batch_size, every, [seed, 13])
        self.probe_images, self.learning_rate, self.last_inputs = tf.constant(probe_images), learning_rate, None
        self.seen, self.correct, self.marked = 0, 0.0, None  # no training accuracy before the first step

    def on_train_begin(self, logs=None):
        self.layer_input = tf.function(lambda images: self.model.layer_outputs(images, training=True)[LAYER])
        super().on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        self.seen, self.correct, self.marked = 0, 0.0, (0, 0.0)

    def on_train_batch_end(self, batch, logs=None):
        self.seen = batch + 1
        self.correct = float(logs["accuracy"]) * self.seen  # Keras's accuracy: the mean over the epoch so far
        super().on_train_batch_end(batch, logs)

    def probe(self):
        train_accuracy = None
        if self.marked is not None:
            seen, correct = self.marked
            train_accuracy = (self.correct - correct) / (self.seen - seen)
        self.marked = (self.seen, self.correct)
        self.fresh_batch()
        with restored_afterwards(self.model.variables):
            # The inputs first: the shift's evaluations leave stepped weights in the model until restored.
            inputs = np.asarray(self.layer_input(self.probe_images))
            shift = internal_covariate_shift(self.loss, self.loss.weights(), self.learning_rate)
        point = {"step": self.step, "train_accuracy": train_accuracy}
        for layer, measures in shift.items():
            point.update({f"ics_{key}_{layer}": value for key, value in measures.items()})
        point.update(zip(("p15", "p50", "p85"), map(float, np.percentile(inputs[:, UNIT], [15, 50, 85]))))
        point["relative_move"] = None if self.last_inputs is None else relative_move(self.last_inputs, inputs)
        self.last_inputs = inputs
        self.curve.append(point)
