"""What makes a training step cheap, each behind one call that
models_handling.fit makes: the compile path (`jit_compile_for`), the
training state built before the first step and the steps per call into
TensorFlow (`prepare`), and the input pipeline (`batches`). None of it
changes what is learned, only how fast (docs/speed.md)."""

import math

import tensorflow as tf

# Training steps per call into TensorFlow where no callback needs each step.
# Measured with `python bench.py --part steps` (docs/speed.md): at batch 2,
# 16 and 64 each doubling from 1 to 32 steps per call was faster, 32 fastest
# on both compile paths; beyond it an epoch of the small sample is a few calls.
STEPS_PER_CALL = 32
# Images gathered from numpy per call in the input pipeline (`batches`).
IMAGES_PER_GATHER = 1024


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


def prepare(model, images, labels, callbacks, steps_per_call=None):
    """Ready `model` for fit: its training state built from one example, and
    `steps_per_call` training steps per call (by default steps_per_call_for
    the callbacks)."""
    build_training_state(model, images[:1], labels[:1])
    per_call = steps_per_call or steps_per_call_for(callbacks)
    if model.steps_per_execution != per_call:
        model.steps_per_execution = per_call
        model.make_train_function(force=True)


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
