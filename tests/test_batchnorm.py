"""The hand-written BatchNorm against Keras's layer (training) and a numpy
reference of the paper's Algorithm 2 over a window (inference)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from common.config import KERAS_BN_VARIANT, MODEL_NAMES, REFERENCES, VARIANTS
from conftest import (
    make_config,
    numpy_batch_norm_training,
    numpy_normalize,
    numpy_population,
    trained_model,
)
from lenet import BatchNorm, batch_norm_training, batch_statistics, build_lenet, normalize

EPSILON = 1e-8
SHAPES = {"dense (N, C)": (32, 7), "conv (N, H, W, C)": (8, 5, 6, 4)}


def random_inputs(shape, seed):
    """Inputs far from zero mean and unit variance, with a different scale per channel."""
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    return (rng.normal(size=shape) * rng.uniform(0.5, 3.0, channels) + rng.uniform(-2, 2, channels)).astype(np.float32)


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
    mean, variance = numpy_population(batches[-5:])
    expected = numpy_normalize(x, mean, variance, ours.gamma.numpy(), ours.beta.numpy(), EPSILON)
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


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "XLA"])
def test_compiled_fit_updates_the_buffers(jit_compile):
    """The earlier project kept its statistics in Python lists, which a compiled
    (graph-mode) fit never updated. XLA is asked for explicitly: compile()'s
    default, "auto", resolves to no XLA on a CPU."""
    model = trained_model(steps=8, window_size=5, jit_compile=jit_compile)
    assert not model.run_eagerly
    assert model.jit_compile is jit_compile
    for name, layer in model.norm.items():
        assert int(layer.recorded_batches.numpy()) == 8, name
        means = layer.mean_window.numpy()
        assert np.all(means != 0), f"{name}: a window row was never written"
        assert len(np.unique(means, axis=0)) == 5, f"{name}: rows should hold different batches"
        assert np.all(layer.variance_window.numpy() > 0), name


def test_layer_config_says_what_the_layer_is():
    layer = BatchNorm(epsilon=1e-3, window_size=7, name="bn")
    config = layer.get_config()
    assert (config["epsilon"], config["window_size"], config["name"]) == (1e-3, 7, "bn")
    clone = BatchNorm.from_config(config)
    assert (clone.epsilon, clone.window_size, clone.name) == (1e-3, 7, "bn")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_variant_config_is_truthful(name):
    """Built with window 9 and epsilon 1e-4, the config says so, and the
    reference's momentum is the one that window implies."""
    model = build_lenet(name, make_config(output_size=5, epsilon=1e-4, window_size=9))
    config = model.get_config()
    assert config["bn_after"] == list(VARIANTS.get(name, VARIANTS["lenet_fc_bn2"]))
    assert (config["output_size"], config["epsilon"], config["window_size"]) == (5, 1e-4, 9)
    assert config["bn_layer"] == REFERENCES.get(name, "ours")
    for norm in model.norm.values():
        if name == KERAS_BN_VARIANT:
            assert norm.momentum == pytest.approx(0.8)  # the window of 9 batches' mean age
        elif name not in REFERENCES:
            assert norm.window_size == 9 and norm.mean_window.shape == (9, norm.gamma.shape[0])
        assert norm.epsilon == 1e-4


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_variant_survives_a_config_and_a_keras_file_round_trip(name, tmp_path):
    model = trained_model(name, steps=3, window_size=2)
    images = np.random.default_rng(1).uniform(size=(12, 32, 32, 1)).astype(np.float32)
    expected = model.predict(images, verbose=0)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected)
    # From the config alone: the same network, which takes the same weights.
    rebuilt = type(model).from_config(model.get_config())
    rebuilt(images[:1])
    rebuilt.set_weights(model.get_weights())
    np.testing.assert_allclose(rebuilt.predict(images, verbose=0), expected, atol=1e-6)


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
    with pytest.raises(ValueError, match=next(iter(arguments))):
        BatchNorm(**{"epsilon": EPSILON, "window_size": 5, **arguments})


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


# ---------------------------------------------------------------- where Keras's layer works


@pytest.fixture
def policy():
    """Set Keras's global dtype policy for one test; float32 again afterwards."""
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


# What an output may differ by, relative and absolute, from the same output in
# float32 or from Keras's layer under the same policy: a few roundings to the
# compute dtype (float16 keeps 11 significant bits, bfloat16 8).
OUTPUT_TOLERANCE = {"mixed_float16": 2e-3, "mixed_bfloat16": 1.6e-2}


@pytest.mark.parametrize("precision", OUTPUT_TOLERANCE)
def test_mixed_precision_keeps_statistics_and_buffer_in_float32(precision, policy):
    """Batch 128 on a 28x28 convolution: m = 100,352 values per channel, more
    than float16 can hold, and m times a variance overflowed it."""
    shape = (128, 28, 28, 6)
    batches = [random_inputs(shape, seed=seed) for seed in range(3)]

    def run():
        ours, reference = ours_and_keras(shape)
        outputs = [(ours(x, training=True), reference(x, training=True)) for x in batches]
        x = tf.constant(batches[0])
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(ours(x, training=True), "float32") * batches[1])
        return ours, outputs, tape.gradient(loss, x)

    float32_layer, _, _ = run()
    policy(precision)
    layer, outputs, gradient = run()

    ours, reference = outputs[-1]
    assert ours.dtype == precision.removeprefix("mixed_")  # the compute dtype
    assert np.all(np.isfinite(np.asarray(ours, np.float32)))
    assert np.all(np.isfinite(np.asarray(gradient, np.float32)))
    tolerance = OUTPUT_TOLERANCE[precision]
    np.testing.assert_allclose(
        np.asarray(ours, np.float32), np.asarray(reference, np.float32), atol=tolerance, rtol=tolerance
    )
    for window in ("mean_window", "variance_window"):
        got, expected = getattr(layer, window), getattr(float32_layer, window)
        assert got.dtype == "float32", window
        np.testing.assert_allclose(got.numpy()[:3], expected.numpy()[:3], rtol=1e-3, atol=1e-6, err_msg=window)
    # Inference from that buffer: finite, and close to the float32 layer's.
    x = batches[2]
    np.testing.assert_allclose(
        np.asarray(layer(x), np.float32), float32_layer(x).numpy(), atol=tolerance, rtol=tolerance
    )
    assert layer.epsilon == EPSILON and float(np.float32(layer.epsilon)) > 0


def test_a_frozen_layer_normalizes_with_its_window_and_records_nothing():
    shape = SHAPES["conv (N, H, W, C)"]
    ours, reference = ours_and_keras(shape)
    for seed in range(3):
        ours(random_inputs(shape, seed=seed), training=True)
        reference(random_inputs(shape, seed=seed), training=True)
    ours.trainable = reference.trainable = False
    windows = (ours.mean_window.numpy().copy(), ours.variance_window.numpy().copy(), int(ours.recorded_batches))
    x = random_inputs(shape, seed=9)
    np.testing.assert_allclose(ours(x, training=True), ours(x, training=False), atol=1e-6)
    # Keras's frozen layer does the same: its training output is its inference output.
    np.testing.assert_allclose(reference(x, training=True), reference(x, training=False), atol=1e-6)
    np.testing.assert_array_equal(ours.mean_window.numpy(), windows[0])
    np.testing.assert_array_equal(ours.variance_window.numpy(), windows[1])
    assert int(ours.recorded_batches) == windows[2]


def test_a_frozen_layer_keeps_its_window_through_a_compiled_fit():
    model = trained_model("lenet_bn2", steps=3)
    frozen, free = model.norm["C1"], model.norm["C3"]
    frozen.trainable = False
    before = frozen.mean_window.numpy().copy(), frozen.gamma.numpy().copy()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    rng = np.random.default_rng(5)
    model.fit(
        rng.uniform(size=(64, 32, 32, 1)).astype(np.float32),
        rng.integers(0, 10, 64),
        batch_size=16,
        epochs=1,
        verbose=0,
    )
    assert int(frozen.recorded_batches) == 3 and int(free.recorded_batches) == 7
    np.testing.assert_array_equal(frozen.mean_window.numpy(), before[0])
    np.testing.assert_array_equal(frozen.gamma.numpy(), before[1])


@pytest.mark.parametrize("spread", [0.0, 1e-5], ids=["constant channel", "near-constant channel"])
def test_a_channel_without_variance_gives_finite_outputs_and_gradients_near_the_exact_ones(spread):
    """Where a channel's variance is far below epsilon, float32 rounding of
    its mean is amplified by 1/sqrt(epsilon) = 1e4; both layers stay finite,
    and ours stays within a few roundings of the float64 answer (Keras's
    layer, whose mean rounds worse, is only checked for finiteness)."""
    shape = SHAPES["conv (N, H, W, C)"]
    x = random_inputs(shape, seed=3)
    x[..., 1] = 0.7 + spread * np.random.default_rng(4).normal(size=shape[:-1])
    ours, reference = ours_and_keras(shape)
    readout = np.random.default_rng(5).normal(size=shape).astype(np.float32)
    results = []
    for layer in (ours, reference):
        with tf.GradientTape() as tape:
            inputs = tf.constant(x)
            tape.watch(inputs)
            y = layer(inputs, training=True)
            loss = tf.reduce_sum(y * readout)
        results.append((y.numpy(), *(g.numpy() for g in tape.gradient(loss, [inputs, layer.gamma, layer.beta]))))
    exact = numpy_batch_norm_training(x, ours.gamma.numpy(), ours.beta.numpy(), EPSILON, readout)
    for name, got, keras_got, expected in zip(
        ("output", "input gradient", "gamma gradient", "beta gradient"), *results, exact
    ):
        assert np.all(np.isfinite(got)) and np.all(np.isfinite(keras_got)), name
        # A rounding of 0.7 (6e-8) in x - mean, times 1e4, is 6e-4.
        np.testing.assert_allclose(got, expected, atol=2e-3 + 1e-3 * np.abs(expected).max(), rtol=0, err_msg=name)


def test_inference_keeps_its_digits_when_the_mean_is_large_against_the_spread():
    """Mean 1e4, sd 1: against float64 on the same float32 inputs. Line 11 of
    Algorithm 2 taken literally (scale * x + (beta - mean * scale)) is about
    1e-3 off here: two products near 1e4 that cancel."""
    shape = (64, 8)
    rng = np.random.default_rng(11)
    x = (1e4 + rng.normal(size=shape)).astype(np.float32)
    ours, _ = ours_and_keras(shape)
    ours(x, training=True)  # the window now holds this batch: mean about 1e4, variance about 1
    mean = ours.mean_window.numpy()[0].astype(np.float64)
    variance = ours.variance_window.numpy()[0].astype(np.float64)
    gamma, beta = ours.gamma.numpy().astype(np.float64), ours.beta.numpy().astype(np.float64)
    expected = numpy_normalize(x.astype(np.float64), mean, variance, gamma, beta, EPSILON)
    np.testing.assert_allclose(ours(x, training=False), expected, atol=1e-5, rtol=0)
    literal = gamma / np.sqrt(variance + EPSILON)
    literal_y = (x * literal.astype(np.float32) + (beta - mean * literal).astype(np.float32)).astype(np.float32)
    assert np.abs(literal_y - expected).max() > 1e-4, "the literal form should lose digits here"
