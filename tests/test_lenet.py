"""The network's shapes and the placement of batch normalization in each variant."""

import keras
import numpy as np
import pytest

from common.config import KERAS_BN_VARIANT, MODEL_NAMES, VARIANTS
from conftest import make_config
from lenet import BatchNorm, build_lenet

# LeNet-5 as in the design's table: what each stage outputs for one 32x32x1 image.
EXPECTED_SHAPES = {
    "C1": (28, 28, 6),
    "S2": (14, 14, 6),
    "C3": (10, 10, 16),
    "S4": (5, 5, 16),
    "C5": (120,),
    "F6": (84,),
    "logits": (10,),
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_stage_has_the_shape_of_lenet5(name):
    model = build_lenet(name, make_config())
    outputs = model.layer_outputs(np.zeros((3, 32, 32, 1), np.float32))
    assert {stage: tuple(value.shape) for stage, value in outputs.items()} == {
        stage: (3, *shape) for stage, shape in EXPECTED_SHAPES.items()
    }
    kernels = {stage: tuple(model.affine[stage].kernel.shape) for stage in ("C1", "C3", "C5", "F6")}
    assert kernels == {"C1": (5, 5, 1, 6), "C3": (5, 5, 6, 16), "C5": (400, 120), "F6": (120, 84)}


@pytest.mark.parametrize("name", VARIANTS)
def test_bn_follows_exactly_the_listed_layers_which_drop_their_bias(name):
    model = build_lenet(name, make_config())
    assert tuple(model.norm) == VARIANTS[name]
    for stage, layer in model.affine.items():
        has_bn = stage in VARIANTS[name]
        assert layer.use_bias is not has_bn, f"{stage}: bias should be {'dropped' if has_bn else 'kept'}"
    for layer in model.norm.values():
        assert isinstance(layer, BatchNorm)
        assert layer.gamma.shape == layer.beta.shape  # one per channel / unit
    channels = {"C1": 6, "C3": 16, "C5": 120, "F6": 84}
    assert {stage: layer.gamma.shape for stage, layer in model.norm.items()} == {
        stage: (channels[stage],) for stage in VARIANTS[name]
    }


def test_reference_variant_uses_keras_batch_normalization_in_the_same_places():
    model = build_lenet(KERAS_BN_VARIANT, make_config(epsilon=1e-6))
    assert tuple(model.norm) == VARIANTS["lenet_fc_bn2"]
    for layer in model.norm.values():
        assert type(layer) is keras.layers.BatchNormalization
        assert layer.epsilon == 1e-6


def test_same_seed_gives_same_initial_weights_with_either_bn_layer():
    """Lets the reference network start from our network's exact weights."""
    keras.utils.set_random_seed(3)
    ours = build_lenet("lenet_fc_bn2", make_config())
    keras.utils.set_random_seed(3)
    reference = build_lenet(KERAS_BN_VARIANT, make_config())
    for stage in ("C1", "C3", "C5", "F6"):
        np.testing.assert_array_equal(ours.affine[stage].kernel.numpy(), reference.affine[stage].kernel.numpy())


def test_the_loss_applies_exactly_one_softmax_to_the_outputs():
    """The earlier project ended in a softmax and then took the loss from
    logits, a double softmax. Here the outputs are logits: unbounded, not
    summing to one, and the compiled loss equals the cross-entropy of their
    softmax. Either mistake (a softmax layer, or a loss without from_logits)
    breaks one of these."""
    import models_handling

    settings = make_config(batch_size=16, epochs=1)
    model = models_handling.build_and_compile("lenet_bn1", settings)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(48, 32, 32, 1)).astype(np.float32)
    labels = rng.integers(0, 10, 48)
    model.fit(images, labels, batch_size=16, epochs=3, verbose=0)
    model.classifier.bias.assign(model.classifier.bias + 3.0)  # logits move; probabilities would not
    logits = model.predict(images, verbose=0)
    assert not np.allclose(logits.sum(axis=1), 1.0)
    assert logits.max() > 1.0
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected_loss = -np.mean(log_softmax[np.arange(48), labels])
    loss, _ = model.evaluate(images, labels, batch_size=48, verbose=0)
    assert loss == pytest.approx(expected_loss, rel=1e-5)


def test_unknown_name_is_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        build_lenet("lenet_bn3", make_config())


@pytest.mark.parametrize(
    "name, layer", [("lenet_gn", keras.layers.GroupNormalization), ("lenet_ln", keras.layers.LayerNormalization)]
)
def test_groupnorm_and_layernorm_stand_in_bns_four_places_and_train(name, layer, tmp_path):
    """Wu and He's references: the same places, no batch statistics, so a
    prediction alone equals it in a batch even before any refill."""
    import models_handling
    import utils
    from conftest import mnist_like

    model = build_lenet(name, make_config())
    assert sorted(model.norm) == ["C1", "C3", "C5", "F6"] and all(isinstance(n, layer) for n in model.norm.values())
    assert not any(affine.use_bias for affine in model.affine.values())
    splits = utils.prepare(*mnist_like(num_train=120, num_test=20), val_split=0.2, seed=0)
    result = models_handling.run_model(
        name, splits, make_config(batch_size=32, epochs=1)
    )  # `precise` has nothing to refill
    assert np.isfinite(result.test_loss)
    images = splits.x_test[:8]
    np.testing.assert_allclose(
        result.model.predict(images[:1], verbose=0), result.model.predict(images, verbose=0)[:1], atol=1e-5
    )


def test_init_std_sets_the_affine_weights_scale():
    for std in (0.05, 2.0):
        model = build_lenet("lenet", make_config(init_std=std))
        kernel = model.affine["C5"].kernel.numpy()  # 400 x 120 draws
        assert np.std(kernel) == pytest.approx(std, rel=0.05)
    glorot = build_lenet("lenet", make_config()).affine["C5"].kernel.numpy()
    assert np.abs(glorot).max() <= np.sqrt(6 / (400 + 120)) + 1e-6  # Keras's Glorot uniform, the default


def test_bn_after_the_sigmoid_normalizes_values_in_0_1_and_keeps_the_bias():
    before = build_lenet("lenet_fc_bn2", make_config())
    after = build_lenet("lenet_fc_bn2", make_config(bn_placement="after"))
    assert all(affine.use_bias for affine in after.affine.values())
    images = np.random.default_rng(0).uniform(size=(16, 32, 32, 1)).astype(np.float32)
    for model in (before, after):
        model(images, training=True)  # one training batch recorded
    means = {place: norm.mean_window.numpy()[0] for place, norm in after.norm.items()}
    assert all(np.all((mean > 0) & (mean < 1)) for mean in means.values()), "after: BN sees sigmoid outputs"
    before_c5 = before.norm["C5"].mean_window.numpy()[0]
    assert np.any((before_c5 <= 0) | (before_c5 >= 1)), "before: BN sees the affine map's values, of any sign"
    # And the window study's copies keep the placement.
    from lenet import rebuild

    assert rebuild(after).bn_placement == "after"


def test_a_model_saved_before_the_knobs_kept_their_names_still_loads():
    """Older saves hold `synchronized` and `keras_momentum` instead of `bn_sync`."""
    from lenet import LeNet5, build_lenet

    config = build_lenet("lenet_keras_bn", make_config(bn_sync="replica")).get_config()
    older = {key: value for key, value in config.items() if key != "bn_sync"}
    older.update(synchronized=False, keras_momentum=0.5)
    assert LeNet5.from_config(older).bn_sync == "replica"
    assert LeNet5.from_config({**older, "synchronized": True}).bn_sync == "global"
