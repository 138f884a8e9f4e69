"""Training across replicas with tf.distribute: BN's statistics synchronized
(or not), whole runs on two logical CPU devices, and what is refused."""

import json

import numpy as np
import pytest
import tensorflow as tf

import models_handling
import utils
from common import records
from conftest import TEST_DEVICES, make_config, mnist_like
from lenet import BatchNorm
from test_main import run_main
from training import devices

EPSILON = 1e-3


def two_replicas():
    return devices.mirrored_cpus(tf.config.list_logical_devices("CPU")[:2])


def shards(strategy, array):
    """`array` split into equal consecutive shards, one per replica."""
    size = len(array) // strategy.num_replicas_in_sync
    return strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(array[context.replica_id_in_sync_group * size :][:size])
    )


def layer_with(gamma, beta, synchronized=True):
    layer = BatchNorm(epsilon=EPSILON, window_size=3, synchronized=synchronized)
    layer.build((None, 4, 4, len(gamma)))
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return layer


def forward_and_gradients(layer, x, upstream):
    """The layer's training output and the gradients of sum(output * upstream)
    with respect to x, gamma and beta."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * upstream)
    return (y, *tape.gradient(loss, [x, layer.gamma.value, layer.beta.value]))


def test_two_devices_exist_for_these_tests():
    assert len(tf.config.list_logical_devices("CPU")) >= TEST_DEVICES == 2


def test_global_bn_on_two_replicas_equals_one_device_on_the_whole_batch():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (8, 4, 4, 3)).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2.0, 3).astype(np.float32), rng.normal(size=3).astype(np.float32)

    single = layer_with(gamma, beta)
    expected = [t.numpy() for t in forward_and_gradients(single, tf.constant(x), tf.constant(upstream))]

    strategy = two_replicas()
    with strategy.scope():
        layer = layer_with(gamma, beta)
    results = strategy.run(forward_and_gradients, args=(layer, shards(strategy, x), shards(strategy, upstream)))
    y, dx, dgamma, dbeta = ([t.numpy() for t in strategy.experimental_local_results(part)] for part in results)

    np.testing.assert_allclose(np.concatenate(y), expected[0], atol=1e-5)
    np.testing.assert_allclose(np.concatenate(dx), expected[1], atol=1e-4)
    # Each replica holds its share of the parameter gradients; the optimizer sums them.
    np.testing.assert_allclose(np.sum(dgamma, axis=0), expected[2], atol=1e-4)
    np.testing.assert_allclose(np.sum(dbeta, axis=0), expected[3], atol=1e-4)
    # Every replica recorded the global batch's statistics (unbiased variance, m = 8*4*4).
    for variable, reference in (
        (layer.mean_window, single.mean_window),
        (layer.variance_window, single.variance_window),
    ):
        for copy in strategy.experimental_local_results(variable.value):
            np.testing.assert_allclose(copy.numpy(), reference.numpy(), atol=1e-5)


def test_replica_bn_normalizes_each_shard_with_its_own_statistics():
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 3.0, (8, 4, 4, 2)).astype(np.float32)
    gamma, beta = np.array([1.5, 0.5], np.float32), np.array([0.1, -0.2], np.float32)
    strategy = two_replicas()
    with strategy.scope():
        layer = layer_with(gamma, beta, synchronized=False)
    outputs = strategy.run(lambda shard: layer(shard, training=True), args=(shards(strategy, x),))
    y = np.concatenate([t.numpy() for t in strategy.experimental_local_results(outputs)])

    means, variances = [], []
    for shard, got in zip(np.split(x, 2), np.split(y, 2)):
        mean, variance = shard.mean(axis=(0, 1, 2)), shard.var(axis=(0, 1, 2))
        np.testing.assert_allclose(got, gamma * (shard - mean) / np.sqrt(variance + EPSILON) + beta, atol=1e-5)
        means.append(mean)
        variances.append(variance * 64 / 63)
    # The window records the replicas' average.
    np.testing.assert_allclose(layer.mean_window.numpy()[0], np.mean(means, axis=0), atol=1e-5)
    np.testing.assert_allclose(layer.variance_window.numpy()[0], np.mean(variances, axis=0), atol=1e-4)


def test_one_epoch_on_two_replicas_repeats_one_device():
    splits = utils.prepare(*mnist_like(num_train=200, num_test=40), val_split=0.15, seed=0)
    settings = make_config(batch_size=32, epochs=1)
    single = models_handling.run_model("lenet_fc_bn2", splits, settings)
    with two_replicas().scope():
        mirrored = models_handling.run_model("lenet_fc_bn2", splits, settings)
    for key in records.HISTORY_KEYS:
        np.testing.assert_allclose(mirrored.history[key], single.history[key], atol=1e-4, err_msg=key)
    np.testing.assert_allclose(mirrored.test_loss, single.test_loss, atol=1e-4)
    # An epoch of training carries the two summation orders' rounding into the
    # windows: up to 1.03e-5 (6e-5 relative) in one C3 mean, measured.
    for name, norm in single.model.norm.items():
        np.testing.assert_allclose(
            mirrored.model.norm[name].mean_window.numpy(), norm.mean_window.numpy(), atol=1e-5, rtol=1e-4
        )
        np.testing.assert_allclose(
            mirrored.model.norm[name].variance_window.numpy(), norm.variance_window.numpy(), atol=1e-5, rtol=1e-4
        )


def test_main_on_two_devices_says_xla_is_off_and_records_the_devices(small_npz, tmp_path, capsys):
    results = tmp_path / "results"
    code, out, err = run_main(
        [
            "--model",
            "lenet_bn2",
            "--devices",
            2,
            "--epochs",
            1,
            "--data",
            small_npz,
            "--results_dir",
            results,
            "--verbose",
            0,
            "--flag_visualizations",
            0,
            "--jit_compile",
            "auto",
        ],
        capsys,
    )
    assert code == 0, err
    assert "2 replicas: XLA off" in out
    settings = json.loads((results / "summary.json").read_text())["lenet_bn2"]["settings"]
    assert (settings["devices"], settings["bn_sync"], settings["jit_compile"]) == (2, "global", False)


BAD_DISTRIBUTION = {
    "no devices": (["--devices", 0], "argument --devices: expected an integer from 1 to 64"),
    "beyond the bound": (["--devices", 65], "argument --devices: expected an integer from 1 to 64"),
    "more than there are": (["--devices", 4], "--devices 4: TensorFlow already runs on 2 CPU device(s)"),
    "batch that does not split": (
        ["--devices", 2, "--batch_size", 33],
        "--batch_size 33 does not split evenly over 2 devices; use a multiple of 2",
    ),
    "unknown sync": (["--bn_sync", "nope"], "argument --bn_sync: invalid choice: 'nope'"),
}


@pytest.mark.parametrize("arguments, message", BAD_DISTRIBUTION.values(), ids=BAD_DISTRIBUTION.keys())
def test_bad_distribution_input_is_one_line_and_touches_nothing(arguments, message, small_npz, tmp_path, capsys):
    results = tmp_path / "results"
    code, out, err = run_main(["--data", small_npz, "--results_dir", results, "--epochs", 1, *arguments], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not results.exists()


@pytest.mark.parametrize(
    "tf_config, message",
    [
        ("{nope", "TF_CONFIG is set but is not a cluster description"),
        (
            '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}',
            "TF_CONFIG names a cluster of 2 worker(s), but training on several machines needs Keras's fit to run under "
            "MultiWorkerMirroredStrategy",
        ),
    ],
)
def test_tf_config_is_refused_in_one_line_while_keras_cannot_train_multi_worker(
    tf_config, message, small_npz, tmp_path, capsys, monkeypatch
):
    """Several machines are blocked by Keras: its fit fails under
    MultiWorkerMirroredStrategy (keras-team/keras#20585), so the run refuses
    TF_CONFIG with the reason instead of a traceback from inside Keras."""
    monkeypatch.setenv("TF_CONFIG", tf_config)
    code, out, err = run_main(["--data", small_npz, "--results_dir", tmp_path / "results"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "results").exists()
