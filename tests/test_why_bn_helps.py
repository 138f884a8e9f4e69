"""Why BN helps (Santurkar et al., 2018): the landscape probe against a
quadratic's closed form, probes that leave the run as it was, the noisy BN
layer, and both studies at small settings."""

import keras
import numpy as np
import pytest
from test_studies import FAST, read_csv, read_summary, run_study

from conftest import make_config, trained_model
from study import landscape, noisy_bn
from test_main import assert_png


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
    result = landscape.probe_along_gradient(quadratic(matrix), theta)
    lam, g_norm = eigenvalues[which], 3.0 * eigenvalues[which]
    assert result["beta"] == pytest.approx(lam, rel=1e-9)
    # Along g = lam * theta: L(theta - eta g) = 0.5 * lam * 9 * (1 - eta lam)^2.
    losses = [0.5 * lam * 9.0 * (1 - eta * lam) ** 2 for eta in landscape.ETAS]
    assert result["loss_range"] == pytest.approx(max(losses) - min(losses), rel=1e-9)
    assert result["gradient_change"] == pytest.approx(max(landscape.ETAS) * lam * g_norm, rel=1e-9)
    assert result["loss"] == pytest.approx(0.5 * lam * 9.0)


def test_off_an_eigenvector_beta_lies_between_the_extreme_eigenvalues():
    matrix, basis = random_symmetric([0.5, 2.0, 7.0, 11.0], seed=1)
    theta = basis @ np.array([1.0, 1.0, 1.0, 1.0])
    beta = landscape.probe_along_gradient(quadratic(matrix), theta)["beta"]
    assert 0.5 < beta < 11.0
    assert beta == pytest.approx(np.linalg.norm(matrix @ matrix @ theta) / np.linalg.norm(matrix @ theta))


def every_value(model):
    return [variable.numpy().copy() for variable in (*model.variables, *model.optimizer.variables)]


def test_the_landscape_probe_leaves_weights_bn_windows_and_optimizer_as_they_were():
    model = trained_model("lenet_fc_bn2")
    before = every_value(model)
    rng = np.random.default_rng(0)
    images, labels = rng.uniform(size=(64, 32, 32, 1)).astype(np.float32), rng.integers(0, 10, 64)
    probe = landscape.LandscapeProbe(images, labels, batch_size=16, every=1, seed=0)
    probe.set_model(model)
    probe.on_train_begin()
    probe.on_train_batch_end(0)
    after = every_value(model)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    first, second = probe.report()
    assert (first["step"], second["step"]) == (0, 1)
    assert first["loss_range"] > 0 and first["beta"] > 0 and np.isfinite(first["gradient_change"])
    # The first probe's loss: the network's cross-entropy on its batch (the
    # first the probe's seed draws), in training mode, at the weights as they are.
    chosen = np.random.default_rng([0, 7]).choice(64, 16, replace=False)
    with landscape.restored_afterwards(model):
        logits = model(images[chosen], training=True)
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels[chosen], logits)
    assert float(expected) == pytest.approx(first["loss"], rel=1e-5)


def test_shift_noise_is_per_channel_fresh_each_step_and_off_at_inference():
    layer = noisy_bn.ShiftNoise(0.5, 1.25, seed=3)
    x = keras.ops.convert_to_tensor(np.random.default_rng(0).normal(size=(8, 4, 4, 6)).astype(np.float32))
    assert np.array_equal(np.asarray(layer(x, training=False)), np.asarray(x))
    first, second = (np.asarray(layer(x, training=True)) for _ in range(2))
    x = np.asarray(x)
    for y in (first, second):
        # y = s * x + m per channel: fit s and m channel by channel, exactly.
        for c in range(6):
            s, m = np.polyfit(x[..., c].ravel(), y[..., c].ravel(), 1)
            assert np.allclose(y[..., c], s * x[..., c] + m, atol=1e-5)
            assert 1.0 <= s <= 1.25 and -0.5 <= m <= 0.5
    assert not np.allclose(first, second)  # drawn afresh at every step


def test_the_noisy_network_at_inference_is_lenet_fc_bn2_with_the_same_weights():
    from lenet import build_lenet, copy_network

    config = make_config()
    plain = build_lenet("lenet_fc_bn2", config)
    noisy = noisy_bn.noisy_network("lenet_fc_bn2", config, noise_mean=1.0, noise_scale=2.0)
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


def test_the_landscape_study_writes_every_probe_its_medians_and_figure4(small_npz, tmp_path, capsys):
    args = ["landscape", "--seeds", 2, "--rates", 0.01, "--every", 2, "--data", small_npz, "--results_dir", tmp_path]
    out = run_study([*args, *FAST], capsys)
    folder = tmp_path / "landscape"
    probes = read_csv(folder / "landscape.csv")
    # 170 training images at batch 64: 3 steps, probed at 0 and 2, for 2 networks and 2 seeds.
    assert sorted((p["model"], p["seed"], p["step"]) for p in probes) == sorted(
        (model, seed, step) for model in ("lenet", "lenet_fc_bn2") for seed in "01" for step in "02"
    )
    part = read_summary(folder)["rates"]["0.01"]
    for model in ("lenet", "lenet_fc_bn2"):
        for seed in (0, 1):
            betas = [float(p["beta"]) for p in probes if (p["model"], p["seed"]) == (model, str(seed))]
            assert part["per_seed_median"][model]["beta"][seed] == pytest.approx(np.median(betas))
    assert "lenet - lenet_fc_bn2:" in out
    assert_png(folder / "landscape_0.01.png")


def test_the_noisy_bn_study_compares_three_networks_and_their_shift(small_npz, tmp_path, capsys):
    run_study(["noisy_bn", "--seeds", 2, "--every", 1, "--data", small_npz, "--results_dir", tmp_path, *FAST], capsys)
    folder = tmp_path / "noisy_bn"
    points = read_csv(folder / "noisy_bn.csv")
    labels = ("lenet", "lenet_fc_bn2", "lenet_fc_bn2 noisy")
    assert {p["model"] for p in points} == set(labels)
    assert all(float(p["p15"]) <= float(p["p50"]) <= float(p["p85"]) for p in points)
    summary = read_summary(folder)
    for label in labels:
        medians = [
            np.mean(np.abs(np.diff([float(p["p50"]) for p in points if (p["model"], p["seed"]) == (label, seed)])))
            for seed in "01"
        ]
        assert summary["per_seed"]["median_step_to_step"][label] == pytest.approx(medians)
    assert_png(folder / "noisy_bn.png")


def test_noisy_bn_refuses_a_scale_below_one_in_one_line(small_npz, tmp_path, capsys):
    import studies

    code = studies.main(["noisy_bn", "--noise_scale", "0.5", "--data", str(small_npz), "--results_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "give 1 or more" in err
