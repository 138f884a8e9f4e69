"""The hand-written BatchNorm against Keras's layer (training) and a numpy
reference of the paper's Algorithm 2 over a window (inference)."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from lenet import BatchNorm, batch_norm_training, batch_statistics, build_lenet, normalize

EPSILON = 1e-8
SHAPES = {"dense (N, C)": (32, 7), "conv (N, H, W, C)": (8, 5, 6, 4)}


def random_inputs(shape, seed):
    """Inputs far from zero mean and unit variance, with a different scale per channel."""
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    return (rng.normal(size=shape) * rng.uniform(0.5, 3.0, channels) + rng.uniform(-2, 2, channels)).astype(
        np.float32
    )


def ours_and_keras(shape, seed=0):
    """Our layer and Keras's, built for `shape`, sharing random gamma and beta."""
    rng = np.random.default_rng(seed)
    ours = BatchNorm(epsilon=EPSILON, window_size=5)
    reference = keras.layers.BatchNormalization(epsilon=EPSILON)
    ours.build(shape)
    reference.build(shape)
    gamma = rng.uniform(0.5, 2.0, shape[-1]).astype(np.float32)
    beta = rng.normal(size=shape[-1]).astype(np.float32)
    for layer in (ours, reference):
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    return ours, reference


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_training_output_equals_keras_batch_normalization(shape):
    ours, reference = ours_and_keras(shape)
    x = random_inputs(shape, seed=1)
    np.testing.assert_allclose(ours(x, training=True), reference(x, training=True), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_training_gradients_equal_keras_batch_normalization(shape):
    ours, reference = ours_and_keras(shape)
    x = tf.constant(random_inputs(shape, seed=2))
    # A random linear read-out: the gradient of a plain sum through BN is zero.
    readout = tf.constant(np.random.default_rng(3).normal(size=shape).astype(np.float32))

    def gradients(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) * readout)
        return tape.gradient(loss, [x, layer.gamma, layer.beta])

    for name, got, expected in zip(("input", "gamma", "beta"), gradients(ours), gradients(reference)):
        assert np.abs(expected).max() > 1e-3, f"the {name} gradient is trivially zero"
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0, err_msg=f"gradient w.r.t. {name}")


def numpy_algorithm2(training_batches, window_size, gamma, beta, x):
    """The paper's Algorithm 2 over the last `window_size` training batches, in numpy:
    E[x] = mean of the batch means, Var[x] = mean of m/(m-1) * batch variance."""
    recent = training_batches[-window_size:]
    axes = tuple(range(x.ndim - 1))
    if recent:
        mean = np.mean([batch.mean(axis=axes, dtype=np.float64) for batch in recent], axis=0)
        variance = np.mean([batch.var(axis=axes, ddof=1, dtype=np.float64) for batch in recent], axis=0)
    else:
        mean, variance = 0.0, 1.0
    return gamma * (x - mean) / np.sqrt(variance + EPSILON) + beta


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("steps", [0, 3, 5, 12], ids=lambda n: f"{n} training steps")
def test_inference_follows_algorithm_2_over_the_window(shape, steps):
    """Window of 5: empty, partly filled, exactly full, and wrapped around. The
    batches have different sizes (the last short), so m differs between them."""
    ours, _ = ours_and_keras(shape)
    batches = []
    for step in range(steps):
        batch_size = shape[0] - (step % 3) * 2
        batch = random_inputs((batch_size, *shape[1:]), seed=100 + step) + step * 0.1
        ours(batch, training=True)
        batches.append(batch)
    x = random_inputs(shape, seed=7)
    expected = numpy_algorithm2(batches, 5, ours.gamma.numpy(), ours.beta.numpy(), x)
    np.testing.assert_allclose(ours(x, training=False), expected, atol=1e-4, rtol=1e-5)
    assert int(ours.recorded_batches.numpy()) == steps


def test_empty_buffer_means_mean_zero_variance_one():
    ours, _ = ours_and_keras((4, 3))
    x = random_inputs((4, 3), seed=5)
    expected = ours.gamma.numpy() * x / np.sqrt(1 + EPSILON) + ours.beta.numpy()
    np.testing.assert_allclose(ours(x, training=False), expected, atol=1e-6)


def test_a_single_value_per_channel_is_not_recorded():
    """A dense batch of one sample has no variance (m - 1 = 0): the window skips it."""
    ours, _ = ours_and_keras((4, 3))
    ours(random_inputs((4, 3), seed=1), training=True)
    before = ours.variance_window.numpy().copy()
    ours(random_inputs((1, 3), seed=2), training=True)
    np.testing.assert_array_equal(ours.variance_window.numpy(), before)
    assert int(ours.recorded_batches.numpy()) == 1


def test_inference_does_not_depend_on_the_batch():
    model = trained_model()
    images = np.random.default_rng(9).uniform(size=(100, 32, 32, 1)).astype(np.float32)
    in_batch = model.predict(images, batch_size=100, verbose=0)
    alone = np.concatenate([model.predict(images[i : i + 1], verbose=0) for i in (0, 37, 99)])
    np.testing.assert_allclose(alone, in_batch[[0, 37, 99]], atol=1e-5)
    # Inference leaves the buffers alone.
    assert int(model.norm["C1"].recorded_batches.numpy()) == 8


def trained_model(name="lenet_fc_bn2", steps=8, window_size=5):
    """A model after `steps` compiled training steps of batch 16 on random data."""
    keras.utils.set_random_seed(0)
    model = build_lenet(name, window_size=window_size)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(16 * steps, 32, 32, 1)).astype(np.float32)
    labels = rng.integers(0, 10, 16 * steps)
    model.fit(images, labels, batch_size=16, epochs=1, verbose=0)
    return model


def test_compiled_fit_updates_the_buffers():
    """The earlier project kept its statistics in Python lists, which a compiled
    (graph-mode) fit never updated."""
    model = trained_model(steps=8, window_size=5)
    assert not model.run_eagerly
    for name, layer in model.norm.items():
        assert int(layer.recorded_batches.numpy()) == 8, name
        means = layer.mean_window.numpy()
        assert np.all(means != 0), f"{name}: a window row was never written"
        assert len(np.unique(means, axis=0)) == 5, f"{name}: rows should hold different batches"
        assert np.all(layer.variance_window.numpy() > 0), name


def test_config_round_trip():
    layer = BatchNorm(epsilon=1e-3, window_size=7, name="bn")
    clone = BatchNorm.from_config(layer.get_config())
    assert (clone.epsilon, clone.window_size, clone.name) == (1e-3, 7, "bn")
    model = build_lenet("lenet_bn2", output_size=5, epsilon=1e-4, window_size=3)
    config = model.get_config()
    rebuilt = type(model).from_config(config)
    assert rebuilt.get_config() == config
    assert rebuilt.bn_after == ("C1", "C3") and rebuilt.output_size == 5


def test_keras_file_round_trip_keeps_buffers_and_predictions(tmp_path):
    model = trained_model(steps=7, window_size=3)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    images = np.random.default_rng(1).uniform(size=(20, 32, 32, 1)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    for name, layer in model.norm.items():
        loaded_layer = loaded.norm[name]
        assert isinstance(loaded_layer, BatchNorm)
        assert int(loaded_layer.recorded_batches.numpy()) == 7
        np.testing.assert_array_equal(loaded_layer.mean_window.numpy(), layer.mean_window.numpy())
        np.testing.assert_array_equal(loaded_layer.variance_window.numpy(), layer.variance_window.numpy())


@pytest.mark.parametrize("arguments", [{"epsilon": 0}, {"window_size": 0}, {"window_size": 2.5}])
def test_bad_parameters_are_rejected(arguments):
    with pytest.raises(ValueError):
        BatchNorm(**arguments)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_written_out_backward_pass_equals_automatic_differentiation(shape):
    """batch_norm_training's backward pass (the paper's equations) against
    TensorFlow differentiating the same forward pass op by op, for a loss
    that also uses the returned statistics."""
    rng = np.random.default_rng(4)
    x = tf.constant(random_inputs(shape, seed=4))
    gamma = tf.constant(rng.uniform(0.5, 2.0, shape[-1]).astype(np.float32))
    beta = tf.constant(rng.normal(size=shape[-1]).astype(np.float32))
    readouts = [tf.constant(rng.normal(size=s).astype(np.float32)) for s in (shape, shape[-1:], shape[-1:])]

    def autodiff_reference(x, gamma, beta):
        mean, variance = batch_statistics(x)
        return normalize(x, mean, variance, gamma, beta, EPSILON), mean, variance

    def gradients(function):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            outputs = function(x, gamma, beta)
            loss = sum(tf.reduce_sum(output * readout) for output, readout in zip(outputs, readouts))
        return tape.gradient(loss, [x, gamma, beta])

    written_out = gradients(lambda *args: batch_norm_training(*args, EPSILON))
    for name, got, expected in zip(("x", "gamma", "beta"), written_out, gradients(autodiff_reference)):
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4, err_msg=f"gradient w.r.t. {name}")
