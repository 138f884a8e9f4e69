"""noisy_bn: more internal covariate shift, and still better training
(Santurkar, Tsipras, Ilyas and Madry, 2018, section 2.1 and Figure 2).

lenet_fc_bn2 with a random shift after each BN layer: at every training
step, for each channel c, a mean m_c ~ U(-noise_mean, noise_mean) and a
scale s_c ~ U(1, noise_scale) are drawn afresh and the BN output y becomes
s_c * y + m_c; at inference the noise is off. The distribution of what the
next layer receives thus moves at every step, by design: more covariate
shift than lenet has. Training accuracy over steps for lenet, lenet_fc_bn2
and the noisy network, and the percentiles of one F6 unit's input in
training mode (as the training steps see it) to show the shift."""

import functools

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import models_handling
import utils
import visualizations
from harness.callbacks import restored_afterwards
from harness.flags import LIMITS, float_up_to, int_up_to
from lenet import INPUT_SHAPE, LeNet5
from study.common import study_dir, write_rows, write_summary
from study.grid import Line, add_seed_count, plan, train
from study.intervals import (
    FEWEST_SEEDS_TO_COMPARE,
    band_curves,
    difference_words,
    paired_difference,
    spread_text,
    summary,
)

ABOUT = "Santurkar et al.'s noisy BN: random shifts after every BN layer, training accuracy against lenet and BN."
LAYER, UNIT, PROBE_IMAGES = "F6", 0, 256


@keras.saving.register_keras_serializable(package="lenet_bn")
class ShiftNoise(keras.layers.Layer):
    """In training only: each channel scaled by s ~ U(1, scale) and shifted by
    m ~ U(-mean, mean), both drawn afresh at every call (every training step)."""

    def __init__(self, mean, scale, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.mean, self.scale, self.seed = mean, scale, seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # 1: on in training; 0 while NoisyLeNet5 refills BN's inference statistics.
        self.on = self.add_weight(shape=(), initializer="ones", trainable=False, name="on")

    def call(self, x, training=False):
        if not training:
            return x
        channels = (x.shape[-1],)
        shift = self.on * keras.random.uniform(channels, -self.mean, self.mean, seed=self.seed_generator)
        scale = 1.0 + self.on * (keras.random.uniform(channels, 1.0, self.scale, seed=self.seed_generator) - 1.0)
        return x * ops.cast(scale, x.dtype) + ops.cast(shift, x.dtype)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "scale": self.scale, "seed": self.seed}


@keras.saving.register_keras_serializable(package="lenet_bn")
class NoisyLeNet5(LeNet5):
    """LeNet5 with ShiftNoise after each of its BN layers."""

    def __init__(self, *, noise_mean, noise_scale, noise_seed=None, **kwargs):
        super().__init__(**kwargs)
        self.noise_mean, self.noise_scale, self.noise_seed = noise_mean, noise_scale, noise_seed
        self.noise = {
            name: ShiftNoise(
                noise_mean, noise_scale, None if noise_seed is None else noise_seed + i, name=f"{name}_noise"
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
        config = {"noise_mean": self.noise_mean, "noise_scale": self.noise_scale, "noise_seed": self.noise_seed}
        return {**super().get_config(), **config}


def noisy_network(name, config, noise_mean, noise_scale):
    """lenet_fc_bn2's places, our BN, ShiftNoise after each (models_handling's `build`)."""
    model = NoisyLeNet5(
        bn_after=("C1", "C3", "C5", "F6"),
        output_size=config.output_size,
        epsilon=config.epsilon,
        window_size=config.window_size,
        init_std=config.init_std,
        bn_placement=config.bn_placement,
        noise_mean=noise_mean,
        noise_scale=noise_scale,
        noise_seed=config.seed,
        name=name,
    )
    model(ops.zeros((1, *INPUT_SHAPE)))
    return model


class TrainingProbe(keras.callbacks.Callback):
    """Every `every` steps: the training accuracy of the batches since the
    last point (from Keras's running mean over the epoch), and the 15th, 50th
    and 85th percentiles of one unit's sigmoid input over fixed training
    images in training mode (noise on, BN with those images' statistics),
    the run left as it was."""

    every_step = True  # one step per call into TensorFlow (models_handling.fit)

    def __init__(self, probe_images, every):
        super().__init__()
        self.images, self.every = tf.constant(probe_images), every
        self.step, self.curve = 0, {"step": [], "train_accuracy": [], "p15": [], "p50": [], "p85": []}

    def on_train_begin(self, logs=None):
        self.unit_input = tf.function(lambda images: self.model.layer_outputs(images, training=True)[LAYER])

    def on_epoch_begin(self, epoch, logs=None):
        self.seen, self.correct, self.marked = 0, 0.0, (0, 0.0)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        self.seen = batch + 1
        self.correct = float(logs["accuracy"]) * self.seen  # Keras's accuracy: the mean over the epoch so far
        if self.step % self.every:
            return
        seen, correct = self.marked
        self.curve["train_accuracy"].append((self.correct - correct) / (self.seen - seen))
        self.marked = (self.seen, self.correct)
        with restored_afterwards(self.model):
            received = np.asarray(self.unit_input(self.images))[:, UNIT]
        self.curve["step"].append(self.step)
        for key, value in zip(("p15", "p50", "p85"), np.percentile(received, [15, 50, 85])):
            self.curve[key].append(float(value))

    def report(self):
        return self.curve


def make_probe(splits, config, every):
    count = min(PROBE_IMAGES, len(splits.x_train))
    chosen = np.random.default_rng([config.seed, 11]).choice(len(splits.x_train), count, replace=False)
    return TrainingProbe(splits.x_train[chosen], every)


def add_arguments(parser, flag):
    parser.add_argument(
        "--noise_mean",
        type=float_up_to(10.0),
        default=0.5,
        help="each step's shift of a channel drawn from U(-NOISE_MEAN, NOISE_MEAN)",
    )
    parser.add_argument(
        "--noise_scale",
        type=float_up_to(10.0),
        default=1.25,
        help="each step's scale of a channel drawn from U(1, NOISE_SCALE)",
    )
    parser.add_argument(
        "--every", type=int_up_to(LIMITS["steps"]), default=10, help="a point every this many training steps"
    )
    add_seed_count(parser, FEWEST_SEEDS_TO_COMPARE)


def run(config, args):
    if args.noise_scale < 1:
        raise utils.UsageError(
            f"--noise_scale {args.noise_scale:g}: the scale is drawn from U(1, NOISE_SCALE); give 1 or more"
        )
    noisy = functools.partial(noisy_network, noise_mean=args.noise_mean, noise_scale=args.noise_scale)
    build = functools.partial(models_handling.build_and_compile, "lenet_fc_bn2", build=noisy)
    lines = [Line("lenet"), Line("lenet_fc_bn2"), Line("lenet_fc_bn2", label="lenet_fc_bn2 noisy", build=build)]
    seeds = list(range(args.seeds))
    cells = plan(config, lines, [{}], seeds, callback=functools.partial(make_probe, every=args.every))
    folder = study_dir(config, "noisy_bn")

    def row_of(cell, done):
        result = done.result
        return {
            "model": cell.line.describe(),
            "seed": cell.seed,
            "test_accuracy": result.test_accuracy,
            "final_train_accuracy": result.history["accuracy"][-1],
            "diverged": result.diverged is not None,
        }

    rows, finished = train(config, cells, utils.load(config), folder / "trainings.csv", row_of)
    labels = [line.describe() for line in lines]
    curves = {
        label: [done.report for cell, done in zip(cells, finished) if cell.line.describe() == label] for label in labels
    }
    write_rows(
        folder / "noisy_bn.csv",
        [
            {"model": label, "seed": seed, **{key: values[i] for key, values in curve.items()}}
            for label in labels
            for seed, curve in zip(seeds, curves[label])
            for i in range(len(curve["step"]))
        ],
    )
    result = {"noise_mean": args.noise_mean, "noise_scale": args.noise_scale, "seeds": seeds, "epochs": config.epochs}
    per_seed = {
        "test_accuracy": {label: [r["test_accuracy"] for r in rows if r["model"] == label] for label in labels},
        "final_train_accuracy": {
            label: [r["final_train_accuracy"] for r in rows if r["model"] == label] for label in labels
        },
        # How far the unit's median moves from one point to the next: the shift a training step sees.
        "median_step_to_step": {
            label: [float(np.mean(np.abs(np.diff(curve["p50"])))) for curve in curves[label]] for label in labels
        },
    }
    result["per_seed"] = per_seed
    result["summary"] = {key: {label: summary(v) for label, v in by.items()} for key, by in per_seed.items()}
    result["noisy_minus_lenet"] = {key: paired_difference(by[labels[2]], by["lenet"]) for key, by in per_seed.items()}
    result["noisy_minus_lenet_fc_bn2"] = {
        key: paired_difference(by[labels[2]], by["lenet_fc_bn2"]) for key, by in per_seed.items()
    }
    print(f"\nover {len(seeds)} seeds, mean (95 % interval)")
    for key, by in per_seed.items():
        print(f"  {key}")
        for label in labels:
            print(f"    {label:<20}{spread_text(by[label])}")
        print(f"    noisy - lenet: {difference_words(result['noisy_minus_lenet'][key])}")
        print(f"    noisy - lenet_fc_bn2: {difference_words(result['noisy_minus_lenet_fc_bn2'][key])}")
    banded = band_curves(curves, ("train_accuracy", "p15", "p50", "p85"))
    banded = {label: {**curve, "test_accuracy": curve["train_accuracy"]} for label, curve in banded.items()}
    visualizations.plot_figure1(
        banded,
        LAYER,
        folder / "noisy_bn.png",
        f"noise after each BN: shift U(-{args.noise_mean:g}, {args.noise_mean:g}), scale U(1, {args.noise_scale:g}) "
        f"per channel and step; {len(seeds)} seeds, band: 95 % interval of the mean; percentiles in training mode",
        accuracy_label="training accuracy",
    )
    write_summary(folder, result)
    return result
