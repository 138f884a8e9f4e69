"""The `precise` rule: BN's inference statistics refilled from the trained,
frozen network (the paper's Algorithm 2, lines 9-10), before every validation."""

import json
from dataclasses import replace

import keras
import numpy as np
import pytest

import models_handling
import utils
from common import records
from common.config import KERAS_BN_VARIANT
from conftest import make_config, mnist_like, numpy_population, trained_model
from lenet import momentum_matching_window
from study import probes
from study.common import first_step_at
from training import precise
from training.precise import refill_statistics

EPSILON = 1e-8


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def numpy_network(model, images, population=None):
    """The network's logits with BN done in numpy (the affine layers are the
    model's own): with every batch's own statistics (training mode) when
    `population` is None, else with population[stage] = (mean, variance).
    Also returns what each BN layer received."""
    x, bn_inputs = images, {}
    for stage in ("C1", "C3", "C5", "F6"):
        if stage == "C5":
            x = x.reshape(len(x), -1)
        z = model.affine[stage](x.astype(np.float32)).numpy().astype(np.float64)
        if stage in model.norm:
            norm = model.norm[stage]
            axes = tuple(range(z.ndim - 1))
            bn_inputs[stage] = z
            mean, variance = (z.mean(axes), z.var(axes)) if population is None else population[stage]
            z = norm.gamma.numpy() * (z - mean) / np.sqrt(variance + EPSILON) + norm.beta.numpy()
        x = sigmoid(z)
        if stage in ("C1", "C3"):  # 2x2 average pooling
            n, h, w, c = x.shape
            x = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    return model.classifier(x.astype(np.float32)).numpy(), bn_inputs


def population_through(model, batches, ddof):
    """Every BN stage's population statistics (Algorithm 2, line 10, in
    numpy) over `batches` passed through the frozen network."""
    inputs = {stage: [] for stage in model.norm}
    for batch in batches:
        for stage, z in numpy_network(model, batch)[1].items():
            inputs[stage].append(z)
    return {stage: numpy_population(received, ddof) for stage, received in inputs.items()}


@pytest.mark.parametrize("name, ddof", [("lenet_fc_bn2", 1), (KERAS_BN_VARIANT, 0)])
def test_refill_freezes_weights_and_inference_follows_algorithm_2_over_the_refill(name, ddof):
    model = trained_model(name, steps=6)
    rng = np.random.default_rng(1)
    batches = [rng.uniform(size=(16, 32, 32, 1)).astype(np.float32) for _ in range(5)]
    test_images = rng.uniform(size=(40, 32, 32, 1)).astype(np.float32)
    trainable_before = [weight.numpy().copy() for weight in model.trainable_weights]
    before = model.predict(test_images, verbose=0)

    refill_statistics(model, batches)

    for weight, value in zip(model.trainable_weights, trainable_before):
        np.testing.assert_array_equal(weight.numpy(), value, err_msg=weight.path)
    expected, _ = numpy_network(model, test_images, population_through(model, batches, ddof))
    got = model.predict(test_images, verbose=0)
    assert np.abs(got - before).max() > 1e-3, "the refill should change the stale statistics"
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    if name != KERAS_BN_VARIANT:
        assert all(int(norm.recorded_batches.numpy()) == 5 for norm in model.norm.values())
    else:
        assert all(norm.momentum == momentum_matching_window(5) for norm in model.norm.values())  # restored


def test_a_refill_with_more_batches_than_the_window_keeps_the_last_ones():
    model = trained_model("lenet_bn2", steps=6, window_size=3)
    rng = np.random.default_rng(2)
    batches = [rng.uniform(size=(8, 32, 32, 1)).astype(np.float32) for _ in range(7)]
    refill_statistics(model, batches)
    test_images = rng.uniform(size=(10, 32, 32, 1)).astype(np.float32)
    expected, _ = numpy_network(model, test_images, population_through(model, batches[-3:], ddof=1))
    np.testing.assert_allclose(model.predict(test_images, verbose=0), expected, atol=1e-4, rtol=1e-4)


def test_refill_batches_are_seeded_per_epoch_and_drawn_without_replacement():
    images = np.arange(100)[:, None]

    def draw(seed, epoch, count=3):
        return precise.refill_batches(images, 32, count, seed, epoch)

    batches = draw(0, 0)
    assert [len(batch) for batch in batches] == [32, 32, 32]
    assert len(np.unique(np.concatenate(batches))) == 96
    assert all(np.array_equal(a, b) for a, b in zip(batches, draw(0, 0)))
    assert not np.array_equal(np.concatenate(batches), np.concatenate(draw(0, 1)))
    assert not np.array_equal(np.concatenate(batches), np.concatenate(draw(1, 0)))
    # More than the split holds: every image before any repeats.
    assert len(np.unique(np.concatenate(draw(0, 0, count=5))[:100])) == 100


def small_splits():
    return utils.prepare(*mnist_like(num_train=200, num_test=20), val_split=0.2, seed=0)


class ValidationLossAfterEachEpoch(keras.callbacks.Callback):
    """What the logged val_loss is compared with: the loss on the validation
    split computed once the epoch is over."""

    def __init__(self, images, labels):
        super().__init__()
        self.images, self.labels, self.losses = images, labels, []

    def on_epoch_end(self, epoch, logs=None):
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.losses.append(float(loss(self.labels, self.model(self.images, training=False))))


def test_validation_after_each_epoch_uses_the_refilled_statistics():
    splits = small_splits()
    settings = make_config(batch_size=32, epochs=3, epsilon=EPSILON)
    model = models_handling.build_and_compile("lenet_fc_bn2", settings)
    check = ValidationLossAfterEachEpoch(splits.x_val, splits.y_val)
    history = models_handling.train(model, splits, settings, callbacks=[check])
    np.testing.assert_allclose(history["val_loss"], check.losses, rtol=1e-5)

    # Under `moving` the same comparison holds too, but with other statistics.
    moving = models_handling.build_and_compile("lenet_fc_bn2", settings)
    moving_history = models_handling.train(moving, splits, replace(settings, bn_statistics="moving"))
    assert moving_history["loss"] == history["loss"], "the rule must not change training"
    assert moving_history["val_loss"] != history["val_loss"]


# lenet_fc_bn2, 2 epochs of batch 32 on mnist_like(160, 20) split 0.2 with seed 0,
# training seed 1, as the code before `precise` existed printed it (commit b4a2e35)
# once each epoch's order of images came from EpochOrder (commit e2f9f54, whose
# training path is otherwise b4a2e35's; tf.data's reshuffling had given
# loss [2.4807, 2.1585] there).
MOVING_BEFORE = json.loads(
    '{"loss": [2.4899983406066895, 2.1580052375793457], "accuracy": [0.125, 0.1953125], '
    '"val_loss": [2.571866035461426, 2.549072742462158], "val_accuracy": [0.125, 0.125], '
    '"test_loss": 2.789314031600952, "test_accuracy": 0.10000000149011612}'
)


def test_moving_reproduces_the_history_from_before_precise_existed():
    splits = utils.prepare(*mnist_like(num_train=160, num_test=20), val_split=0.2, seed=0)
    settings = make_config(batch_size=32, epochs=2, epsilon=EPSILON, seed=1, bn_statistics="moving")
    result = models_handling.run_model("lenet_fc_bn2", splits, settings)
    for key in records.HISTORY_KEYS:
        np.testing.assert_allclose(result.history[key], MOVING_BEFORE[key], rtol=1e-4, err_msg=key)
    assert result.test_loss == pytest.approx(MOVING_BEFORE["test_loss"], rel=1e-4)
    assert result.test_accuracy == pytest.approx(MOVING_BEFORE["test_accuracy"])


def test_a_measurement_under_the_rule_leaves_the_statistics_as_they_were():
    model = trained_model("lenet_fc_bn2", steps=6)
    images = np.random.default_rng(3).uniform(size=(64, 32, 32, 1)).astype(np.float32)
    before = model.predict(images, verbose=0)
    state = [variable.numpy().copy() for norm in model.norm.values() for variable in norm.non_trainable_variables]
    config = make_config(batch_size=16)
    with precise.as_the_rule_predicts(model, images, config, draw=0) as measured:
        inside = measured.predict(images, verbose=0)
    assert np.abs(inside - before).max() > 1e-3, "inside, the refilled statistics predict"
    after = [variable.numpy() for norm in model.norm.values() for variable in norm.non_trainable_variables]
    for saved, now in zip(state, after):
        np.testing.assert_array_equal(now, saved)
    np.testing.assert_array_equal(model.predict(images, verbose=0), before)


@pytest.mark.parametrize("rule", ["precise", "moving"])
def test_a_validation_curve_leaves_the_training_exactly_as_without_it(rule):
    splits = small_splits()
    config = make_config(batch_size=32, epochs=2, bn_statistics=rule)
    plain = models_handling.run_model("lenet_fc_bn2", splits, config)
    curve = probes.ValidationCurve(splits.x_val, splits.y_val, splits.x_train, config, every=2)
    watched = models_handling.run_model("lenet_fc_bn2", splits, config, callbacks=[curve])
    assert watched.history == plain.history and watched.test_accuracy == plain.test_accuracy
    assert curve.curve["step"] == [0, 2, 4, 6, 8, 10]  # 160 images, batch 32: 5 steps an epoch
    # Its last point is the trained network, validated as the last epoch's end validated it.
    assert curve.curve["val_accuracy"][-1] == pytest.approx(plain.history["val_accuracy"][-1])
    assert first_step_at(curve.curve, 0.0) == 0 and first_step_at(curve.curve, 1.01) is None
