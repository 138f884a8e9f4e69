"""The networks only the studies train, beside lenet.py's: the BN paper's
MNIST MLP (figure1, landscape), LeNet-5 with noise after its BN layers
(noisy_bn) and LeNet-5 with the earlier project's inference rule (window).
The first two come with the `build` function that models_handling's
build_and_compile takes."""

import functools

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from common.config import VARIANTS
from lenet import INPUT_SHAPE, BatchNorm, LeNet5, batch_statistics, network_knobs, normalize

SPREAD = 0.1  # each activation's shift about mu (uniform, half-width) and scale about sigma (normal, sd)
NOISE_KINDS = {"activation": "noisy", "channel": "noisy per channel"}  # BNNoise's kinds, and the study's labels


@keras.saving.register_keras_serializable(package="lenet_bn")
class PaperMLP(keras.Model):
    """The BN paper's MNIST network (section 4.1): flatten -> 3 x (dense 100
    -> sigmoid) -> dense 10 logits; with `bn`, our BatchNorm between each
    dense layer (then without bias) and its sigmoid. The 32x32 padded images
    go in whole: the padding is zeros, so 1,024 inputs carry MNIST's 784."""

    def __init__(self, *, bn, epsilon, window_size, **kwargs):
        super().__init__(**kwargs)
        self.bn, self.epsilon, self.window_size = bn, epsilon, window_size
        self.flatten = keras.layers.Flatten()
        self.hidden = {name: keras.layers.Dense(100, use_bias=not bn, name=name) for name in ("H1", "H2", "H3")}
        self.norm = (
            {name: BatchNorm(epsilon=epsilon, window_size=window_size, name=f"{name}_bn") for name in self.hidden}
            if bn
            else {}
        )
        self.classifier = keras.layers.Dense(10, name="output", dtype="float32")

    def layer_outputs(self, images, training=False):
        """Each hidden layer's sigmoid input (after BN where there is BN), and the logits."""
        out, x = {}, self.flatten(images)
        for name, dense in self.hidden.items():
            out[name] = dense(x)
            if name in self.norm:
                out[name] = self.norm[name](out[name], training=training)
            x = keras.ops.sigmoid(out[name])
        out["logits"] = self.classifier(x)
        return out

    def call(self, images, training=False):
        return self.layer_outputs(images, training)["logits"]

    @tf.function
    def record_statistics(self, images):
        self(images, training=True)

    def get_config(self):
        return {**super().get_config(), "bn": self.bn, "epsilon": self.epsilon, "window_size": self.window_size}


def build_network(name, config):
    """For models_handling.build_and_compile: a LeNet variant, or the paper's MLP."""
    if name in ("mlp", "mlp_bn"):
        model = PaperMLP(bn=name == "mlp_bn", epsilon=config.epsilon, window_size=config.window_size, name=name)
        model(np.zeros((1, 32, 32, 1), np.float32))
        return model
    from lenet import build_lenet

    return build_lenet(name, config)


@keras.saving.register_keras_serializable(package="lenet_bn")
class BNNoise(keras.layers.Layer):
    """In training only, y -> s * y + m, drawn afresh at every call (every
    training step). kind "activation": mu ~ U(-mean, mean) and sigma ~
    U(1, scale) for the layer, then s ~ N(sigma, SPREAD^2) and m ~ U(mu -
    SPREAD, mu + SPREAD) for each activation of each sample. kind "channel":
    one m ~ U(-mean, mean) and s ~ U(1, scale) per channel, shared by the
    batch."""

    def __init__(self, mean, scale, kind="activation", seed=None, **kwargs):
        super().__init__(**kwargs)
        if kind not in NOISE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
        self.mean, self.scale, self.kind, self.seed = mean, scale, kind, seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # 1: on in training; 0 while NoisyLeNet5 refills BN's inference statistics.
        self.on = self.add_weight(shape=(), initializer="ones", trainable=False, name="on")

    def draw(self, shape):
        """The scale s and shift m for a tensor of `shape`."""
        uniform = functools.partial(keras.random.uniform, seed=self.seed_generator)
        if self.kind == "channel":
            channels = (shape[-1],)
            return uniform(channels, 1.0, self.scale), uniform(channels, -self.mean, self.mean)
        mu, sigma = uniform((), -self.mean, self.mean), uniform((), 1.0, self.scale)
        scale = keras.random.normal(shape, mean=sigma, stddev=SPREAD, seed=self.seed_generator)
        return scale, uniform(shape, mu - SPREAD, mu + SPREAD)

    def call(self, x, training=False):
        if not training:
            return x
        scale, shift = self.draw(ops.shape(x))
        scale = 1.0 + self.on * (scale - 1.0)
        return x * ops.cast(scale, x.dtype) + ops.cast(self.on * shift, x.dtype)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "scale": self.scale, "kind": self.kind, "seed": self.seed}


@keras.saving.register_keras_serializable(package="lenet_bn")
class NoisyLeNet5(LeNet5):
    """LeNet5 with BNNoise after each of its BN layers."""

    def __init__(self, *, noise_mean, noise_scale, noise_kind="activation", noise_seed=None, **kwargs):
        super().__init__(**kwargs)
        self.noise_mean, self.noise_scale, self.noise_kind, self.noise_seed = (
            noise_mean,
            noise_scale,
            noise_kind,
            noise_seed,
        )
        self.noise = {
            name: BNNoise(
                noise_mean,
                noise_scale,
                noise_kind,
                None if noise_seed is None else noise_seed + i,
                name=f"{name}_noise",
            )
            for i, name in enumerate(self.bn_after)
        }

    def normalize(self, name, x, training):
        return self.noise[name](super().normalize(name, x, training), training=training)

    @tf.function
    def record_statistics(self, images):
        """The precise refill (Algorithm 2) measures the network that
        inference runs, so without the noise: with it, each refill batch's
        random shifts would move the statistics of every BN layer after it."""
        for noise in self.noise.values():
            noise.on.assign(0.0)
        self(images, training=True)
        for noise in self.noise.values():
            noise.on.assign(1.0)

    def get_config(self):
        noise = {"noise_mean": self.noise_mean, "noise_scale": self.noise_scale, "noise_kind": self.noise_kind}
        return {**super().get_config(), **noise, "noise_seed": self.noise_seed}


def noisy_network(name, config, noise_mean, noise_scale, noise_kind):
    """lenet_fc_bn2's places, our BN, BNNoise after each (models_handling's `build`)."""
    model = NoisyLeNet5(
        bn_after=VARIANTS["lenet_fc_bn2"],
        **network_knobs(config),
        noise_mean=noise_mean,
        noise_scale=noise_scale,
        noise_kind=noise_kind,
        noise_seed=config.seed,
        name=name,
    )
    model(ops.zeros((1, *INPUT_SHAPE)))
    return model


class BatchStatisticsAtInference(BatchNorm):
    """The earlier project's inference rule, kept for this study only: normalize
    each predicted batch with its own statistics, so that a prediction depends
    on the other images in its batch."""

    def call(self, inputs, training=None):
        if training:
            return super().call(inputs, training)
        mean, variance = batch_statistics(inputs)
        return normalize(inputs, mean, variance, self.gamma, self.beta, self.epsilon)


class EarlierProjectLeNet5(LeNet5):
    def _make_norm(self, name):
        return BatchStatisticsAtInference(epsilon=self.epsilon, window_size=self.window_size, name=name)
