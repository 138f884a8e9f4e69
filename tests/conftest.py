"""Shared fixtures: small generated MNIST-like data in every format the project reads."""

import gzip
import os
import signal
import struct
import time
from pathlib import Path

import numpy as np
import pytest

import utils

# pytest.ini runs the suite in parallel processes (pytest-xdist's -n auto).
# TensorFlow's kernels get nothing from a second thread on LeNet's small
# ops, so each test process takes its share of the cores and no more: two
# processes on two cores then do twice the work of one, instead of fighting
# over both cores.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, len(os.sched_getaffinity(0)) // WORKERS)
# Two logical CPU devices for the tf.distribute tests (test_devices.py);
# a plain run places everything on the first, as it would without them.
TEST_DEVICES = 2


def pytest_configure(config):
    """Start TensorFlow, with THREADS threads and TEST_DEVICES logical CPU
    devices, before any test module imports it (TensorFlow fixes both when it
    first runs). Not in pytest-xdist's controller, which only hands out the
    tests: starting it there held back the test processes by about 7 s."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    utils.import_tensorflow_quietly()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * TEST_DEVICES
    )


def pytest_xdist_auto_num_workers(config):
    """-n auto: one test process per core, at most 8 (each holds its own
    TensorFlow, about 400 MB)."""
    return min(8, len(os.sched_getaffinity(0)))


def mnist_like(num_train=200, num_test=60, seed=0):
    """Random uint8 images (N, 28, 28) and labels 0..9, shaped and typed as MNIST."""
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, num_train).astype(np.uint8),
        rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, num_test).astype(np.uint8),
    )


def write_npz(path, x_train, y_train, x_test, y_test):
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def write_idx(path, array, compress):
    """Write `array` (uint8) in LeCun's IDX format: 0, 0, type 0x08, ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    content = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    opener = gzip.open if compress else open
    with opener(f"{path}.gz" if compress else path, "wb") as stream:
        stream.write(content)


@pytest.fixture
def small_npz(tmp_path):
    return write_npz(tmp_path / "small.npz", *mnist_like())


@pytest.fixture
def mnist_npz():
    """The real MNIST sample the project ships (data/mnist-subset.npz)."""
    path = Path(__file__).resolve().parent.parent / "data" / "mnist-subset.npz"
    assert path.is_file(), f"{path} is missing: it ships with the project (git checkout -- data/)"
    return str(path)


def interrupt_once_written(process, path, seconds):
    """Ctrl-C (SIGINT) to `process` once `path` exists (or it has ended, or
    `seconds` have passed); its (stdout, stderr)."""
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    return process.communicate(timeout=120)


# ---------------------------------------------------------------- shared helpers


def make_config(**changes):
    """main.py's DEFAULTS as a Config, quiet (verbose 0) and on TensorFlow's
    own kernels (jit_compile 0, no timing of both paths), with `changes`."""
    from main import DEFAULTS, Config

    return Config.of(DEFAULTS, **{"verbose": 0, "jit_compile": False, **changes})


def numpy_batch_norm_training(x, gamma, beta, epsilon, dy):
    """Algorithm 1 and the paper's backward pass in float64: y, and the
    gradients of sum(y * dy) with respect to x, gamma and beta."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    axes = tuple(range(x.ndim - 1))
    m = x.size // x.shape[-1]
    x_hat = (x - x.mean(axis=axes)) / np.sqrt(x.var(axis=axes) + epsilon)
    dbeta, dgamma = dy.sum(axis=axes), (dy * x_hat).sum(axis=axes)
    dx = gamma / np.sqrt(x.var(axis=axes) + epsilon) / m * (m * dy - dbeta - x_hat * dgamma)
    return gamma * x_hat + beta, dx, dgamma, dbeta


def numpy_population(batches, ddof=1):
    """Algorithm 2, line 10, in float64, over BN inputs of recorded training
    batches: E[x] the mean of the batch means, Var[x] the mean of the batch
    variances (unbiased, ddof=1, as our layer records them; Keras's layer
    keeps biased ones, ddof=0). No batch: mean 0 and variance 1."""
    if not batches:
        return 0.0, 1.0
    axes = tuple(range(batches[0].ndim - 1))
    means = [batch.mean(axis=axes, dtype=np.float64) for batch in batches]
    variances = [batch.var(axis=axes, ddof=ddof, dtype=np.float64) for batch in batches]
    return np.mean(means, axis=0), np.mean(variances, axis=0)


def numpy_normalize(x, mean, variance, gamma, beta, epsilon):
    """Algorithm 2, line 11 (and Algorithm 1, lines 3-4, with a batch's own statistics)."""
    return gamma * (x - mean) / np.sqrt(variance + epsilon) + beta


def trained_model(name="lenet_fc_bn2", steps=8, window_size=5, jit_compile=False):
    """A variant after `steps` compiled training steps of batch 16 on random
    data (so its moving window holds statistics of weights that have since changed)."""
    import keras

    from lenet import build_lenet

    keras.utils.set_random_seed(0)
    model = build_lenet(name, make_config(window_size=window_size))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(16 * steps, 32, 32, 1)).astype(np.float32)
    labels = rng.integers(0, 10, 16 * steps)
    model.fit(images, labels, batch_size=16, epochs=1, verbose=0)
    return model


def assert_one_line_error(code, err, *fragments):
    """A refusal as a user must see it: exit status 2, one line on stderr
    holding every fragment, no traceback."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
