"""One model: build it by name, compile, train and evaluate it.

Every function takes the run's configuration whole (harness.config.Config).
The callbacks a training runs with are in harness/callbacks.py and
harness/precise.py; what a run writes, in harness/results_folder.py.
"""

import math
import time
from dataclasses import replace

import keras
import tensorflow as tf

from harness import compile_path, precise
from harness.callbacks import EpochOrder, NonFiniteLossWatch, StopOnDivergence
from harness.compile_path import STEPS
from harness.devices import threads_now
from harness.results_folder import HISTORY_KEYS, ModelResult
from lenet import build_lenet
from utils import UsageError, seeded

# Training steps per call into TensorFlow where no callback needs each step.
# Measured with `python bench.py --part steps` (docs/speed.md): at batch 2,
# 16 and 64 each doubling from 1 to 32 steps per call was faster, 32 fastest
# on both compile paths; beyond it an epoch of the small sample is a few calls.
STEPS_PER_CALL = 32
# Images gathered from numpy per call in the input pipeline (`batches`).
IMAGES_PER_GATHER = 1024


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
        # "measure" decides at the start of training (fit); until then, TensorFlow's kernels.
        jit_compile=jit_compile_for(config),
        steps_per_execution=steps_per_execution,
    )
    if tf.distribute.get_strategy().num_replicas_in_sync == 1:  # several replicas keep one step per call
        NonFiniteLossWatch(model)
    return model


def jit_compile_for(config):
    """The compile path a model starts on: XLA (True) or TensorFlow's own
    kernels (False). "auto" is a rule, the same on every run of a machine:
    XLA where there is a GPU, TensorFlow's kernels on a CPU, where they were
    the faster path at batch 16 and 64 for every variant (docs/speed.md)."""
    if config.jit_compile == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return config.jit_compile is True


def steps_per_call_for(callbacks):
    """Training steps per call into TensorFlow (Keras's steps_per_execution):
    STEPS_PER_CALL, or 1 when a callback looks at every step (`every_step`)
    or several replicas train. Keras runs a call's steps as a loop inside
    one TensorFlow function, the same step each time, so the numbers do not
    change; what goes is the per-call cost, most of a step at small batches."""
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        return 1
    return 1 if any(getattr(callback, "every_step", False) for callback in callbacks) else STEPS_PER_CALL


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


def batches(images, labels, batch_size, order=None):
    """A tf.data pipeline of (images, labels) mini-batches, the last one short,
    in the order of the images or, with `order` (an EpochOrder), in the
    current epoch's order.

    The pipeline batches positions and the images are gathered from the numpy
    arrays, which stay outside TensorFlow: copied whole into a tensor
    (Dataset.from_tensors) they cost a second copy of the data in memory
    (3.2 GB for 800,000 images) and risk TensorFlow's 2 GB limit on graph
    constants. Each call into numpy gathers several batches at once (about
    IMAGES_PER_GATHER images), which TensorFlow then splits: a call per batch
    cost 175 us a batch at batch size 2 against 52 us (docs/speed.md), a
    tenth of a training step there. tf.data's autotuner is off: on a 2-core
    machine its background work took a core from training for whole epochs
    at a time, halving throughput (measured with bench.py).
    """

    def gather(positions):
        chosen = positions if order is None else order.order()[positions]
        return images[chosen], labels[chosen]

    def gather_tensors(positions):
        image_batch, label_batch = tf.numpy_function(
            gather,
            [positions],
            (tf.as_dtype(images.dtype), tf.as_dtype(labels.dtype)),
            stateful=order is not None,
        )
        return tf.ensure_shape(image_batch, (None, *images.shape[1:])), tf.ensure_shape(label_batch, (None,))

    def split(image_chunk, label_chunk):
        return tf.data.Dataset.from_tensor_slices((image_chunk, label_chunk)).batch(batch_size)

    per_gather = max(1, IMAGES_PER_GATHER // batch_size) * batch_size  # whole batches: the same batches as one by one
    options = tf.data.Options()
    options.autotune.enabled = False
    pipeline = tf.data.Dataset.range(len(images)).batch(per_gather).map(gather_tensors).flat_map(split)
    # flat_map hides how many batches come; Keras needs it (epoch ends, progress bar, the precise refill).
    pipeline = pipeline.apply(tf.data.experimental.assert_cardinality(math.ceil(len(images) / batch_size)))
    return pipeline.with_options(options).prefetch(2)


def fit(model, images, labels, config, epochs, validation_data=None, callbacks=(), steps_per_call=None):
    """Keras's fit over mini-batches in a seeded order that changes every
    epoch (EpochOrder), validating on `validation_data` (images, labels)
    after every epoch (in batches of config.inference_batch_size), at
    `steps_per_call` training steps per call into TensorFlow (by default
    steps_per_call_for the callbacks).

    With `jit_compile` "measure", the model's first fit starts on the faster
    compile path: the one this machine chose before for the same model and
    settings (compile_path.remembered_choice), else the one timed now on a few
    batches of `images` and then remembered; printed and kept as
    `model.jit_choice`."""
    build_training_state(model, images[:1], labels[:1])
    per_call = steps_per_call or steps_per_call_for(callbacks)
    if model.steps_per_execution != per_call:
        model.steps_per_execution = per_call
        model.make_train_function(force=True)
    if config.jit_compile == "measure" and getattr(model, "jit_choice", None) is None:
        key = compile_path.choice_key(model.name, config, threads_now(), model.steps_per_execution)
        model.jit_choice = compile_path.remembered_choice(key)
        if model.jit_choice is None:
            model.jit_choice = compile_path.choose_jit_compile(model, timing_batches(images, labels, config.batch_size))
            compile_path.remember(key, model.jit_choice)
        else:
            model.jit_compile = model.jit_choice.jit_compile
            model.make_train_function(force=True)
        print(f"{model.name}: {model.jit_choice.describe()}")
    if validation_data is not None:
        validation_data = batches(*validation_data, config.inference_batch_size)
    order = EpochOrder(len(images), config.seed)
    return model.fit(
        batches(images, labels, config.batch_size, order),
        epochs=epochs,
        validation_data=validation_data,
        shuffle=False,  # the pipeline shuffles
        verbose=config.verbose,
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
    loss, accuracy = model.evaluate(batches(images, labels, config.inference_batch_size), verbose=0)
    return float(loss), float(accuracy)


def run_model(name, splits, config, model=None, callbacks=(), backup=None):
    """Train and test one model: the named one, built and compiled here, or
    `model`, already compiled, reported under `name`. With `backup` (a
    ResumableTraining), every finished epoch is backed up, and a backed-up
    run continues from its last finished epoch."""
    if model is None:
        model = build_and_compile(name, config)
    if backup is not None and backup.jit_choice is not None and config.jit_compile == "measure":
        model.jit_choice = backup.jit_choice
        compile_model(model, replace(config, jit_compile=backup.jit_choice.jit_compile))
        print(f"{name}: {backup.jit_choice.path()}, as chosen before the interruption")
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
    choice = getattr(model, "jit_choice", None)
    return ModelResult(
        name,
        history,
        test_loss,
        test_accuracy,
        seconds,
        trainable,
        model=model,
        diverged=divergence.at,
        jit_choice=choice.record() if choice else None,
    )
