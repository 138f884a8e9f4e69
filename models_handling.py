"""One model: build it by name, compile, train and evaluate it.

Every function takes the run's configuration whole (main.Config, made from the table of knobs).
What a training needs besides the network is in training/: the `precise`
rule, the callbacks, and what makes a step cheap (training/speed.py). What
a run writes is harness/results_folder.py's job, above this module.
"""

import time

import keras
import tensorflow as tf

from common.records import HISTORY_KEYS, ModelResult
from lenet import build_lenet
from training import precise, speed
from training.callbacks import EpochOrder, NonFiniteLossWatch, StopOnDivergence
from utils import UsageError, seeded


def make_optimizer(name, learning_rate=None):
    """A fresh Keras optimizer from its name ("adam", "sgd", ...)."""
    try:
        optimizer_class = type(keras.optimizers.get(name))
        if learning_rate is None:
            return optimizer_class()
        return optimizer_class(learning_rate=learning_rate)
    except Exception:
        raise UsageError(
            f"--optimizer {name}: not a Keras optimizer; use a name such as adam, sgd, rmsprop, adamw, nadam or adagrad"
        ) from None


def compile_model(model, config, steps_per_execution=1):
    """Compile with the run's optimizer and logits-based cross-entropy, and
    watch its training steps' losses (callbacks.NonFiniteLossWatch) so that
    the divergence stop names the first non-finite step however many steps
    run per call. fit sets how many do."""
    model.compile(
        optimizer=make_optimizer(config.optimizer, config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=speed.jit_compile_for(config),
        steps_per_execution=steps_per_execution,
    )
    if tf.distribute.get_strategy().num_replicas_in_sync == 1:  # several replicas keep one step per call
        NonFiniteLossWatch(model)
    return model


def build_and_compile(name, config, build=build_lenet):
    """The named model, seeded, built under the run's precision, compiled.

    Keras's dtype policy is global and read when layers are made, so it is set
    here for every model, float32 included, so that one run's choice never
    leaks into the next. Under mixed_float16 Keras's compile wraps the
    optimizer in a LossScaleOptimizer by itself.
    """
    keras.mixed_precision.set_global_policy(config.precision)
    with seeded(config.seed):
        model = build(name, config)
    return compile_model(model, config)


def fit(model, images, labels, config, epochs, validation_data=None, callbacks=(), steps_per_call=None):
    """Keras's fit over mini-batches in a seeded order that changes every
    epoch (EpochOrder), validating on `validation_data` (images, labels)
    after every epoch, in batches of config.inference_batch_size."""
    speed.prepare(model, images, labels, callbacks, steps_per_call)
    if validation_data is not None:
        validation_data = speed.batches(*validation_data, config.inference_batch_size)
    order = EpochOrder(len(images), config.seed)
    return model.fit(
        speed.batches(images, labels, config.batch_size, order),
        epochs=epochs,
        validation_data=validation_data,
        shuffle=False,  # the pipeline shuffles
        verbose=config.verbose,
        callbacks=[order, *callbacks],
    )


def train(model, splits, config, callbacks=()):
    """Fit on the training split, validating after every epoch; the history as plain lists."""
    if precise.applies(model, config):
        callbacks = [*callbacks, precise.PreciseStatistics(splits.x_train, config)]
    if config.patience:  # after the refill: the epoch's validation is what it compares
        callbacks = [*callbacks, keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=config.patience)]
    history = fit(model, splits.x_train, splits.y_train, config, config.epochs, (splits.x_val, splits.y_val), callbacks)
    return {key: [float(value) for value in history.history[key]] for key in HISTORY_KEYS}


def evaluate(model, images, labels, config):
    """(loss, accuracy) on the given images, in inference mode."""
    loss, accuracy = model.evaluate(speed.batches(images, labels, config.inference_batch_size), verbose=0)
    return float(loss), float(accuracy)


def run_model(name, splits, config, model=None, callbacks=(), backup=None):
    """Train and test one model: the named one, built and compiled here, or
    `model`, already compiled, reported under `name`. With `backup` (a
    ResumableTraining), every finished epoch is backed up, and a backed-up
    run continues from its last finished epoch."""
    if model is None:
        model = build_and_compile(name, config)
    divergence = StopOnDivergence()
    start = time.perf_counter()
    history = train(model, splits, config, [*([backup] if backup else []), *callbacks, divergence])
    seconds = time.perf_counter() - start
    if backup is not None:  # its history holds the restored epochs too, fit's only those it ran
        history = {key: list(backup.history[key]) for key in HISTORY_KEYS}
        seconds += backup.earlier_seconds
    # A diverged model has nothing to test: its weights are not numbers.
    test_loss, test_accuracy = (None, None) if divergence.at else evaluate(model, splits.x_test, splits.y_test, config)
    trainable = sum(int(weight.numpy().size) for weight in model.trainable_weights)
    return ModelResult(
        name,
        history,
        test_loss,
        test_accuracy,
        seconds,
        trainable,
        model=model,
        diverged=divergence.at,
    )
