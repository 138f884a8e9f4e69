"""Why BN helps (Santurkar et al., 2018): the landscape probe against a
quadratic's closed form, the scale-free rescaling, Definition 2.1's shift
against a direct computation, probes that leave the run as it was, the noise
layers, and both studies at small settings."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_studies import FAST, read_csv, read_summary, run_study

from conftest import make_config, trained_model
from study import gradients, landscape, networks, noisy_bn, probes
from study.networks import build_network
from test_main import assert_png
from training.callbacks import restored_afterwards

ETAS = (0.05, 0.1, 0.2, 0.4)


def quadratic(matrix):
    """L(theta) = 0.5 theta^T A theta and its gradient A theta."""
    return lambda theta: (0.5 * theta @ matrix @ theta, matrix @ theta)


def random_symmetric(eigenvalues, seed=0):
    basis, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigenvalues),) * 2))
    return basis @ np.diag(eigenvalues) @ basis.T, basis


@pytest.mark.parametrize("which", [0, 2, 3])
def test_on_a_quadratic_along_an_eigenvector_beta_is_its_eigenvalue(which):
    eigenvalues = [0.5, 2.0, 7.0, 11.0]
    matrix, basis = random_symmetric(eigenvalues)
    theta = 3.0 * basis[:, which]
    result = landscape.probe_along_gradient(quadratic(matrix), theta, ETAS)
    lam, g_norm = eigenvalues[which], 3.0 * eigenvalues[which]
    assert result["beta"] == pytest.approx(lam, rel=1e-9)
    # Along g = lam * theta: L(theta - eta g) = 0.5 * lam * 9 * (1 - eta lam)^2.
    losses = [0.5 * lam * 9.0 * (1 - eta * lam) ** 2 for eta in ETAS]
    assert result["loss_range"] == pytest.approx(max(losses) - min(losses), rel=1e-9)
    assert result["gradient_change"] == pytest.approx(max(ETAS) * lam * g_norm, rel=1e-9)
    assert result["loss"] == pytest.approx(0.5 * lam * 9.0)


def test_off_an_eigenvector_beta_lies_between_the_extreme_eigenvalues():
    matrix, basis = random_symmetric([0.5, 2.0, 7.0, 11.0], seed=1)
    theta = basis @ np.array([1.0, 1.0, 1.0, 1.0])
    beta = landscape.probe_along_gradient(quadratic(matrix), theta, ETAS)["beta"]
    assert 0.5 < beta < 11.0
    assert beta == pytest.approx(np.linalg.norm(matrix @ matrix @ theta) / np.linalg.norm(matrix @ theta))


def every_value(model):
    return [variable.numpy().copy() for variable in (*model.variables, *model.optimizer.variables)]


def random_batch(count=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(count, 32, 32, 1)).astype(np.float32), rng.integers(0, 10, count)


def test_the_landscape_probe_leaves_weights_bn_windows_and_optimizer_as_they_were():
    model = trained_model("lenet_fc_bn2")
    before = every_value(model)
    images, labels = random_batch(64)
    probe = probes.LandscapeProbe(images, labels, batch_size=16, learning_rate=0.1, every=1, seed=0)
    probe.set_model(model)
    probe.on_train_begin()
    probe.on_train_batch_end(0)
    after = every_value(model)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    first, second = probe.report()
    assert (first["step"], second["step"]) == (0, 1)
    for view in landscape.VIEWS:
        assert first[f"{view}_loss_range"] > 0 and first[f"{view}_beta"] > 0
    assert {key for key in first if key.startswith("norm_")} == {"norm_C1", "norm_C3", "norm_C5", "norm_F6"}
    assert first["norm_C3"] == pytest.approx(float(np.linalg.norm(model.affine["C3"].kernel.numpy())), rel=1e-6)
    # The first probe's loss: the network's cross-entropy on its batch (the
    # first the probe's seed draws), in training mode, at the weights as they are.
    chosen = np.random.default_rng([0, 7]).choice(64, 16, replace=False)
    with restored_afterwards(model.variables):
        logits = model(images[chosen], training=True)
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels[chosen], logits)
    assert float(expected) == pytest.approx(first["loss"], rel=1e-5)


@pytest.mark.parametrize("name", ["lenet_fc_bn2", "mlp_bn"])
def test_bn_fed_filters_at_unit_norm_leave_the_loss_and_predictions_as_they_were(name):
    model = build_network(name, make_config(seed=0))
    loss = gradients.BatchLoss(model)
    images, labels = random_batch()
    loss.set_batch(images, labels)
    theta = loss.weights()
    # Scale the BN-fed kernels far from 1 first, so that the rescale has work to do.
    for part, _ in loss.kernel_slices.values():
        theta[part] *= np.random.default_rng(1).uniform(0.2, 5.0)
    unit = loss.unit_filters(theta)
    assert not np.allclose(unit, theta)
    for part, shape in loss.kernel_slices.values():
        kernel = unit[part].reshape(shape)
        assert np.allclose(np.linalg.norm(kernel.reshape(-1, shape[-1]), axis=0), 1.0)
    with restored_afterwards(model.variables):
        (before, _), (after, _) = loss(theta), loss(unit)
        predictions = []
        for weights in (theta, unit):
            loss(weights)
            predictions.append(np.asarray(model(images, training=True)))
    assert after == pytest.approx(before, rel=1e-5)
    assert np.allclose(predictions[0], predictions[1], atol=1e-4)


def test_a_network_without_bn_has_no_bn_fed_kernels_and_one_probe():
    model = build_network("lenet", make_config(seed=0))
    loss = gradients.BatchLoss(model)
    loss.set_batch(*random_batch())
    point = landscape.probe_point(loss, ETAS)
    assert not loss.kernel_slices and not any(key.startswith("norm_") for key in point)
    assert all(point[f"raw_{m}"] == point[f"scale_free_{m}"] for m in landscape.MEASURES)


@pytest.mark.parametrize("name", ["lenet", "lenet_fc_bn2"])
def test_internal_covariate_shift_is_the_gradient_change_after_the_layers_below_step(name):
    """Definition 2.1 against a direct computation with GradientTape on the model's own variables."""
    model = build_network(name, make_config(seed=0))
    loss = gradients.BatchLoss(model)
    images, labels = random_batch()
    loss.set_batch(images, labels)
    rate = 0.5
    with restored_afterwards(model.variables):
        shift = gradients.internal_covariate_shift(loss, loss.weights(), rate)
    assert list(shift) == ["C3", "C5", "F6", "output"]  # C1 has nothing below it

    def layer_gradients():
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            value = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
        return tape.gradient(value, [v for _, group in gradients.layer_groups(model) for v in group])

    groups = gradients.layer_groups(model)
    with restored_afterwards(model.variables):
        before = layer_gradients()
        sizes = np.cumsum([0, *(len(group) for _, group in groups)])
        original = [v.numpy() for _, group in groups for v in group]
        for index, (layer, _) in enumerate(groups[1:], start=1):
            variables = [v for _, g in groups for v in g]
            for position, variable in enumerate(variables):
                below = position < sizes[index]
                variable.assign(original[position] - rate * before[position].numpy() if below else original[position])
            after = layer_gradients()
            g = np.concatenate([before[p].numpy().ravel() for p in range(sizes[index], sizes[index + 1])])
            g2 = np.concatenate([after[p].numpy().ravel() for p in range(sizes[index], sizes[index + 1])])
            assert shift[layer]["l2"] == pytest.approx(np.linalg.norm(g - g2), rel=1e-3, abs=1e-7)
            assert shift[layer]["cosine"] == pytest.approx(g @ g2 / np.linalg.norm(g) / np.linalg.norm(g2), abs=1e-5)
    with restored_afterwards(model.variables):
        unmoved = gradients.internal_covariate_shift(loss, loss.weights(), 0.0)
    assert all(measures["l2"] == 0.0 and measures["cosine"] == pytest.approx(1.0) for measures in unmoved.values())


def test_activation_noise_is_per_sample_and_position_fresh_each_step_and_off_at_inference():
    layer = networks.BNNoise(0.5, 1.25, "activation", seed=3)
    x = keras.ops.ones((8, 4, 4, 6))
    assert np.array_equal(np.asarray(layer(x, training=False)), np.asarray(x))
    first, second = (np.asarray(layer(x, training=True)) for _ in range(2))
    # Two samples, two positions of one channel: each activation its own draw.
    assert first[0, 0, 0, 0] != first[1, 0, 0, 0] and first[0, 0, 0, 0] != first[0, 1, 2, 0]
    assert not np.allclose(first, second)  # drawn afresh at every step
    # y = s * 1 + m with s ~ N(sigma, 0.1^2), sigma in [1, 1.25]; m within 0.1 of mu in [-0.5, 0.5].
    assert -0.6 + 1.0 - 0.5 < first.mean() < 0.6 + 1.25 + 0.5


@pytest.mark.parametrize("kind, removed", [("channel", True), ("activation", False)])
def test_a_bn_right_after_removes_the_channel_noise_and_not_the_per_activation_noise(kind, removed):
    """BN is unchanged by a positive per-channel scale and shift of its input,
    shared by the batch; not by noise that differs from sample to sample."""
    from lenet import BatchNorm

    x = keras.ops.convert_to_tensor(np.random.default_rng(0).normal(size=(32, 4, 4, 6)).astype(np.float32))
    noise, bn = networks.BNNoise(0.5, 1.25, kind, seed=1), BatchNorm(epsilon=1e-8, window_size=5)
    clean, noisy = np.asarray(bn(x, training=True)), np.asarray(bn(noise(x, training=True), training=True))
    assert np.allclose(clean, noisy, atol=1e-4) == removed


def test_the_noisy_network_at_inference_is_lenet_fc_bn2_with_the_same_weights():
    from lenet import build_lenet, copy_network

    config = make_config()
    plain = build_lenet("lenet_fc_bn2", config)
    noisy = networks.noisy_network("lenet_fc_bn2", config, noise_mean=1.0, noise_scale=2.0, noise_kind="activation")
    copy_network(plain, noisy)  # the affine layers, gamma and beta; both windows fresh
    images = np.random.default_rng(0).uniform(size=(5, 32, 32, 1)).astype(np.float32)
    assert np.allclose(noisy(images, training=False), plain(images, training=False), atol=1e-6)
    # The precise refill records what inference will run: the statistics without the noise.
    plain.record_statistics(images)
    noisy.record_statistics(images)
    for name in plain.norm:
        for mine, theirs in zip(noisy.norm[name].non_trainable_weights, plain.norm[name].non_trainable_weights):
            assert np.allclose(mine.numpy(), theirs.numpy(), atol=1e-6), name
    assert all(float(noise.on.numpy()) == 1.0 for noise in noisy.noise.values())  # on again for training
    assert not np.allclose(noisy(images, training=True), plain(images, training=True), atol=1e-3)


def test_the_landscape_study_writes_both_setups_probes_and_log_scale_comparisons(small_npz, tmp_path, capsys):
    args = ["landscape", "--seeds", 2, "--every", 2, "--data", small_npz, "--results_dir", tmp_path]
    run_study([*args, *FAST], capsys)
    folder = tmp_path / "landscape"
    probes = read_csv(folder / "landscape.csv")
    # 170 training images: 3 steps at batch 64 (lenet), 3 at batch 60 (mlp); probed at 0 and 2.
    models = ("mlp", "mlp_bn", "lenet", "lenet_fc_bn2")
    assert sorted((p["model"], p["seed"], p["step"]) for p in probes) == sorted(
        (model, seed, step) for model in models for seed in "01" for step in "02"
    )
    summary = read_summary(folder)
    assert summary["multiples_of_the_step"] == list(landscape.MULTIPLES)
    for setup, (plain, bn) in (("mlp", ("mlp", "mlp_bn")), ("lenet", ("lenet", "lenet_fc_bn2"))):
        part = summary["setups"][setup]
        assert part["optimizer"] == "sgd" and part["steps"] == [k * part["learning_rate"] for k in landscape.MULTIPLES]
        for key in ("raw_beta", "scale_free_beta"):
            medians = {
                model: [
                    np.median([float(p[key]) for p in probes if (p["model"], p["seed"]) == (model, s)]) for s in "01"
                ]
                for model in (plain, bn)
            }
            compared = part["over_training"][key]
            assert compared["bn"]["mean"] == pytest.approx(np.exp(np.mean(np.log(medians[bn]))))
            ratio = np.exp(np.mean(np.log(np.array(medians[bn]) / np.array(medians[plain]))))
            assert compared["bn_over_plain"]["mean"] == pytest.approx(ratio)
        assert set(part["kernel_norms"]) == ({"H1", "H2", "H3"} if setup == "mlp" else {"C1", "C3", "C5", "F6"})
        assert_png(folder / f"landscape_{setup}.png")


def test_the_noisy_bn_study_measures_shift_for_four_networks(small_npz, tmp_path, capsys):
    run_study(["noisy_bn", "--seeds", 2, "--every", 1, "--data", small_npz, "--results_dir", tmp_path, *FAST], capsys)
    folder = tmp_path / "noisy_bn"
    points = read_csv(folder / "noisy_bn.csv")
    labels = ("lenet", "lenet_fc_bn2", "lenet_fc_bn2 noisy", "lenet_fc_bn2 noisy per channel")
    assert {p["model"] for p in points} == set(labels)
    assert all(float(p["p15"]) <= float(p["p50"]) <= float(p["p85"]) for p in points)
    summary = read_summary(folder)
    assert summary["optimizer"] == "sgd"
    for label in labels:
        for layer in noisy_bn.LAYERS:
            key = f"ics_l2_{layer}"
            medians = [
                np.median([float(p[key]) for p in points if (p["model"], p["seed"]) == (label, s)]) for s in "01"
            ]
            assert summary["per_seed"][key][label] == pytest.approx(medians)
            assert all(-1 <= float(p[f"ics_cosine_{layer}"]) <= 1 + 1e-6 for p in points)
    assert set(summary["against_lenet"]["ics_l2_C3"]) == set(labels[1:])
    assert_png(folder / "noisy_bn.png")


def test_noisy_bn_refuses_a_scale_below_one_in_one_line(small_npz, tmp_path, capsys):
    import studies

    code = studies.main(["noisy_bn", "--noise_scale", "0.5", "--data", str(small_npz), "--results_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "give 1 or more" in err
