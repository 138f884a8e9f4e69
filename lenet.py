"""LeNet-5 (LeCun et al., 1998) with a hand-written batch normalization layer
(Ioffe and Szegedy, 2015).

The file reads top to bottom: the BN math as pure functions (the paper's
Algorithms 1 and 2), the Keras layer that keeps the state those functions need,
then the network and its named variants.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from common.config import MODEL_NAMES, REFERENCES, VARIANTS

# --------------------------------------------------------------------------
# The BN math: pure functions of tensors, no Keras state.
# --------------------------------------------------------------------------


# Every function below works on a 2-D view of its input, one row per example
# (N, H*W*C for a convolution's output, channels varying fastest), with each
# per-channel vector repeated along the row. It is the same arithmetic, laid
# out for TensorFlow's CPU kernels, which broadcast a short last axis (6
# channels after C1) about ten times slower than a long row, and reduce over
# rows much faster than over N*H*W strided values (measured; see README's
# Speed). XLA fuses either layout.


def as_rows(x):
    """x viewed as a matrix with one row per example (no copy); with sizes
    unknown until run time (None in x.shape), one row per position instead."""
    per_example = x.shape[1:]
    return ops.reshape(x, (-1, x.shape[-1] if None in per_example else math.prod(per_example)))


def along_rows(vector, rows):
    """A per-channel vector repeated to the width of `rows` (once per position)."""
    return ops.tile(vector, [rows.shape[1] // vector.shape[0]])


def channel_sums(rows, channels):
    """Every channel's sum over all its values in `rows`: over the examples,
    then over the positions."""
    return ops.sum(ops.reshape(ops.sum(rows, axis=0), (-1, channels)), axis=0)


def values_per_channel(x):
    """m, the number of values each channel's statistics pool (N, or N*H*W)."""
    return ops.size(x) // x.shape[-1]


def moments(x):
    """Algorithm 1, lines 1-2: every channel's mini-batch mean and biased
    variance, and x - mean (as rows, for the backward pass).

    The statistics run over every axis but the last, so for a convolution's
    output (N, H, W, C) each channel pools m = N*H*W values, the paper's
    "effective mini-batch" (section 3.2). The variance is the mean squared
    deviation from the mean (two passes): E[x^2] - E[x]^2 loses digits when
    the mean is large against the spread.
    """
    rows, channels = as_rows(x), x.shape[-1]
    m = ops.cast(values_per_channel(x), x.dtype)
    mean = channel_sums(rows, channels) / m
    centered = rows - along_rows(mean, rows)
    variance = channel_sums(ops.square(centered), channels) / m
    return mean, variance, centered


def batch_statistics(x):
    """Algorithm 1, lines 1-2: every channel's mini-batch mean and biased variance."""
    mean, variance, _ = moments(x)
    return mean, variance


def normalize(x, mean, variance, gamma, beta, epsilon):
    """y = gamma * (x - mean) / sqrt(variance + epsilon) + beta.

    Algorithm 1, lines 3-4, with the mini-batch's own statistics; Algorithm 2,
    line 11, with the population's. Computed as (x - mean) * scale + beta with
    scale = gamma / sqrt(variance + epsilon): centred first, so that a mean
    large against the spread loses no digits (line 11's scale * x + (beta -
    mean * scale) subtracts two large, rounded products: 1e-3 off at mean 1e4
    and sd 1, where this is 1e-7 off; a test checks it).
    """
    rows = as_rows(x)
    return ops.reshape(scale_and_shift(rows - along_rows(mean, rows), variance, gamma, beta, epsilon), ops.shape(x))


def scale_and_shift(centered, variance, gamma, beta, epsilon):
    """Centred rows times gamma / sqrt(variance + epsilon), plus beta."""
    scale = gamma * ops.rsqrt(variance + epsilon)
    return centered * along_rows(scale, centered) + along_rows(beta, centered)


def batch_norm_training(x, gamma, beta, epsilon):
    """Algorithm 1: normalize x with its own mini-batch statistics.

    Returns y and the statistics it used (mean and biased variance), which the
    layer records for inference. The backward pass is the paper's (section 3):
    its dl/dvariance and dl/dmean substituted into dl/dx. Written out, it
    passes over x and dy 7 times (2 sums, 5 elementwise ops) where
    differentiating the forward pass op by op passes many more times.
    """

    # ops.custom_gradient is tf.custom_gradient on the TensorFlow backend, the
    # one this project runs on: `backward` gets one upstream gradient per output.
    @ops.custom_gradient
    def forward(x, gamma, beta):
        mean, variance, centered = moments(x)

        def backward(dy, dmean, dvariance):
            channels = x.shape[-1]
            m = ops.cast(values_per_channel(x), x.dtype)
            dy = as_rows(dy)
            inverse_std = ops.rsqrt(variance + epsilon)
            scale = gamma * inverse_std
            dbeta = channel_sums(dy, channels)
            dgamma = channel_sums(dy * centered, channels) * inverse_std  # sum of dy * x_hat
            # The paper's dl/dx, with x_hat = centered * inverse_std, is
            #   scale * (dy - dbeta / m - x_hat * dgamma / m);
            # gradients that reach the returned statistics themselves (none do
            # inside the layer, which only records them) add
            #   (dmean + 2 * dvariance * centered) / m.
            # Gathered into per-channel factors: 2 multiplies and 2 adds per value.
            centered_factor = (2.0 * dvariance - scale * inverse_std * dgamma) / m
            constant = (dmean - scale * dbeta) / m
            dx = dy * along_rows(scale, dy) + centered * along_rows(centered_factor, dy) + along_rows(constant, dy)
            return ops.reshape(dx, ops.shape(x)), dgamma, dbeta

        y = ops.reshape(scale_and_shift(centered, variance, gamma, beta, epsilon), ops.shape(x))
        return (y, mean, variance), backward

    return forward(x, gamma, beta)


def synchronized_batch_statistics(x, replicas):
    """Algorithm 1, lines 1-2, over the global batch that the replicas of a
    tf.distribute strategy share: every channel's mean and biased variance
    over all replicas' values, and m, how many values that is.

    `replicas` is the tf.distribute replica context. Each replica's count and
    per-channel sum are summed across replicas (an all-reduce), then the
    squared deviations from that global mean (a second one: exact, where
    E[x^2] - E[x]^2 loses digits when the mean is large). TensorFlow passes
    gradients back through an all-reduce (as an all-reduce of the gradients),
    so autodiff gives every replica the gradient of the global statistics:
    training on N replicas is training on one device with the global batch.
    """
    rows, channels = as_rows(x), x.shape[-1]
    local_count = ops.cast(values_per_channel(x), x.dtype)
    # One tensor per all-reduce, each depending on the one before: replicas
    # must launch their all-reduces in the same order.
    totals = replicas.all_reduce(
        tf.distribute.ReduceOp.SUM, ops.concatenate([channel_sums(rows, channels), local_count[None]], axis=0)
    )
    mean, count = totals[:-1] / totals[-1], totals[-1]
    squared_deviations = replicas.all_reduce(
        tf.distribute.ReduceOp.SUM, channel_sums(ops.square(rows - along_rows(mean, rows)), channels)
    )
    return mean, squared_deviations / count, count


def batch_norm_synchronized(x, gamma, beta, epsilon, replicas):
    """Algorithm 1 with the global batch's statistics (synchronized_batch_statistics):
    y, the statistics, and m over all replicas."""
    mean, variance, count = synchronized_batch_statistics(x, replicas)
    return normalize(x, mean, variance, gamma, beta, epsilon), mean, variance, count


def population_statistics(mean_window, variance_window, filled):
    """Algorithm 2, line 10, over a window of training mini-batches.

    Rows 0..filled-1 of `mean_window` and `variance_window` ([window_size, C])
    hold the means and unbiased variances m/(m-1) * sigma2_B of recent training
    batches. E[x] is the average of those means and Var[x] the average of those
    variances. With no row filled (no training step yet) the result is mean 0
    and variance 1, which makes BN the identity up to gamma and beta, as
    Keras's own layer does before training.
    """
    window_size = mean_window.shape[0]
    filled = ops.cast(filled, "int32")
    row_is_filled = ops.arange(window_size) < filled
    weights = ops.cast(row_is_filled, mean_window.dtype)[:, None]
    count = ops.maximum(ops.cast(filled, mean_window.dtype), 1.0)
    mean = ops.sum(mean_window * weights, axis=0) / count
    variance = ops.sum(variance_window * weights, axis=0) / count
    variance = ops.where(filled > 0, variance, ops.ones_like(variance))
    return mean, variance


# --------------------------------------------------------------------------
# The Keras layer: parameters, the ring buffer, and which algorithm runs when.
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="lenet_bn")
class BatchNorm(keras.layers.Layer):
    """Batch normalization over every axis but the last (channels or units).

    Training (`training=True`) normalizes with the mini-batch's own statistics
    and pushes them into a ring buffer of the last `window_size` training
    batches. Inference normalizes with the average over that buffer, so a
    prediction never depends on the other samples in its batch.

    The buffer lives in non-trainable weights, so a compiled `fit` updates it
    and a saved model keeps it. A training batch with a single value per
    channel (a dense layer fed one sample) carries no variance information, so
    it is not recorded.

    As Keras's own layer: under a mixed-precision policy the statistics and
    the buffer are float32 and the output is in the compute dtype; a frozen
    layer (`trainable = False`) normalizes with its buffer and records nothing,
    even in training mode, which is what fine-tuning relies on.

    Under a tf.distribute strategy with several replicas, `synchronized=True`
    normalizes every replica's shard with the global batch's statistics (as
    Keras's `synchronized=True` and PyTorch's SyncBatchNorm), and every
    replica records that same row; `synchronized=False` normalizes each shard
    with its own statistics ("ghost batches"), and the buffer records their
    average over the replicas. With one replica both are Algorithm 1 as is.
    """

    def __init__(self, *, epsilon, window_size, synchronized=True, **kwargs):
        super().__init__(**kwargs)
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon}")
        if int(window_size) != window_size or window_size < 1:
            raise ValueError(f"window_size must be a positive integer, got {window_size}")
        self.epsilon = float(epsilon)
        self.window_size = int(window_size)
        self.synchronized = bool(synchronized)

    def build(self, input_shape):
        channels = input_shape[-1]
        # autocast=False: read as stored (float32 under a mixed policy), never
        # rounded to float16 inside `call`.
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma", autocast=False)
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta", autocast=False)
        window_shape = (self.window_size, channels)
        # How replicas' writes combine under tf.distribute: synchronized, they
        # all write the same row, which the first replica's write stands for;
        # otherwise their rows are averaged.
        rows = "only_first_replica" if self.synchronized else "mean"
        self.mean_window = self.add_weight(
            shape=window_shape,
            initializer="zeros",
            dtype="float32",
            trainable=False,
            autocast=False,
            aggregation=rows,
            name="mean_window",
        )
        self.variance_window = self.add_weight(
            shape=window_shape,
            initializer="ones",
            dtype="float32",
            trainable=False,
            autocast=False,
            aggregation=rows,
            name="variance_window",
        )
        # How many training batches have been recorded; the next goes into
        # row recorded_batches % window_size.
        self.recorded_batches = self.add_weight(
            shape=(),
            initializer="zeros",
            dtype="int64",
            trainable=False,
            aggregation="only_first_replica",
            name="recorded_batches",
        )

    def call(self, inputs, training=None):
        # float32 whatever the compute dtype: a C1 channel at batch 64 pools
        # m = 50,176 values, and m itself, m times a variance, and an epsilon
        # of 1e-8 are beyond float16 (largest 65,504, smallest ~6e-8).
        x = ops.cast(inputs, "float32")
        gamma = ops.cast(self.gamma.value, "float32")
        beta = ops.cast(self.beta.value, "float32")
        # None in a strategy's cross-replica context (the `precise` refill,
        # which passes whole batches); TensorFlow's default context otherwise.
        replicas = tf.distribute.get_replica_context()
        synchronize = self.synchronized and replicas is not None and replicas.num_replicas_in_sync > 1
        if training and self.trainable and synchronize:
            outputs, mean, variance, count = batch_norm_synchronized(x, gamma, beta, self.epsilon, replicas)
            self._record(mean, variance, count)
        elif training and self.trainable:
            outputs, mean, variance = batch_norm_training(x, gamma, beta, self.epsilon)
            self._record(mean, variance, ops.cast(values_per_channel(x), "float32"))
        else:
            mean, variance = population_statistics(self.mean_window, self.variance_window, self.filled_rows())
            outputs = normalize(x, mean, variance, gamma, beta, self.epsilon)
        return ops.cast(outputs, self.compute_dtype)

    def filled_rows(self):
        return ops.minimum(self.recorded_batches, self.window_size)

    def empty_window(self):
        """Forget every recorded batch: the next ones refill the window from row 0."""
        self.recorded_batches.assign(0)

    def _record(self, mean, variance, m):
        """Write the batch's mean and unbiased variance (over its m values per
        channel) into the buffer's next row."""
        unbiased_variance = variance * m / ops.maximum(m - 1, 1)
        has_variance = m > 1

        slot = ops.cast(self.recorded_batches % self.window_size, "int32")
        write_row = ops.logical_and(ops.arange(self.window_size) == slot, has_variance)[:, None]
        self.mean_window.assign(ops.where(write_row, mean[None, :], self.mean_window))
        self.variance_window.assign(ops.where(write_row, unbiased_variance[None, :], self.variance_window))
        self.recorded_batches.assign_add(ops.cast(has_variance, "int64"))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "epsilon": self.epsilon,
            "window_size": self.window_size,
            "synchronized": self.synchronized,
        }


# --------------------------------------------------------------------------
# The network and its variants.
# --------------------------------------------------------------------------

# Where each variant puts BN is the table VARIANTS (common/config.py, where
# the command line reads the names without starting TensorFlow):
# lenet none; lenet_bn1 C1; lenet_bn2 C1, C3; lenet_fc_bn1 C1, C3, C5;
# lenet_fc_bn2 C1, C3, C5, F6; lenet_keras_bn as lenet_fc_bn2 with Keras's layer.

INPUT_SHAPE = (32, 32, 1)


@keras.saving.register_keras_serializable(package="lenet_bn")
class LeNet5(keras.Model):
    """LeNet-5 as drawn in LeCun et al. (1998), Fig. 2, with sigmoid units.

    32x32x1 -> C1 conv 6@5x5 -> S2 avg-pool 2x2 -> C3 conv 16@5x5 -> S4 avg-pool 2x2
    -> C5 dense 120 -> F6 dense 84 -> dense `output_size` logits (no softmax: the
    loss takes logits).

    `bn_after` names the affine layers (C1, C3, C5, F6) that are followed by batch
    normalization, placed between the affine map and its sigmoid as in the BN
    paper, section 3.2 (`bn_placement` "before"; such a layer drops its bias,
    which BN's beta replaces), or after the sigmoid ("after"; the bias stays).
    `bn_layer` is "ours" (the hand-written `BatchNorm`), or a reference:
    "keras" (`keras.layers.BatchNormalization`), "group" (GroupNorm) or
    "layer" (LayerNorm). `bn_sync`: under a tf.distribute strategy, BN
    normalizes with the global batch's statistics (True) or each replica's
    own (False). `init_std`: None for Keras's initializers, else the affine
    weights drawn from N(0, init_std^2).
    """

    # GroupNorm's groups at each place: 2 to 4 channels a group in the
    # convolutions (6 and 16 channels), 15 and 21 units in C5 and F6.
    GROUPS = {"C1": 2, "C3": 4, "C5": 8, "F6": 4}
    # The knobs of main.py's table the network is built with, under their
    # names there (build_lenet passes them, get_config and rebuild keep them).
    KNOBS = ("output_size", "epsilon", "window_size", "bn_sync", "init_std", "bn_placement")

    def __init__(
        self,
        *,
        bn_after,
        output_size,
        epsilon,
        window_size,
        bn_layer="ours",
        bn_sync="global",
        init_std=None,
        bn_placement="before",
        **kwargs,
    ):
        super().__init__(**kwargs)
        unknown = set(bn_after) - {"C1", "C3", "C5", "F6"}
        if unknown:
            raise ValueError(f"bn_after may name C1, C3, C5, F6; got {sorted(unknown)}")
        if bn_layer not in ("ours", "keras", "group", "layer"):
            raise ValueError(f"bn_layer must be 'ours', 'keras', 'group' or 'layer', got {bn_layer!r}")
        if bn_placement not in ("before", "after"):
            raise ValueError(f"bn_placement must be 'before' or 'after', got {bn_placement!r}")
        self.bn_after = tuple(bn_after)
        self.bn_layer = bn_layer
        self.output_size = output_size
        self.epsilon = epsilon
        self.window_size = window_size
        self.bn_sync = bn_sync
        self.init_std, self.bn_placement = init_std, bn_placement
        weights = "glorot_uniform" if init_std is None else keras.initializers.RandomNormal(stddev=init_std)

        def affine(name, layer, **options):
            bias = name not in self.bn_after or bn_placement == "after"  # before the sigmoid, BN's beta replaces it
            return layer(name=name, use_bias=bias, kernel_initializer=weights, **options)

        self.affine = {
            "C1": affine("C1", keras.layers.Conv2D, filters=6, kernel_size=5),
            "C3": affine("C3", keras.layers.Conv2D, filters=16, kernel_size=5),
            "C5": affine("C5", keras.layers.Dense, units=120),
            "F6": affine("F6", keras.layers.Dense, units=84),
        }
        self.norm = {name: self._make_norm(f"{name}_bn") for name in self.bn_after}
        self.pool = keras.layers.AveragePooling2D(pool_size=2, name="pool")
        self.flatten = keras.layers.Flatten(name="flatten")
        # float32 logits under a mixed-precision policy too, as Keras's guide
        # advises: the softmax in the loss is where float16 would round most.
        self.classifier = keras.layers.Dense(output_size, name="output", dtype="float32")

    def _make_norm(self, name):
        place = name.removesuffix("_bn")
        if self.bn_layer == "group":
            return keras.layers.GroupNormalization(groups=self.GROUPS[place], epsilon=self.epsilon, name=name)
        if self.bn_layer == "layer":  # over every value of one example: channels and positions alike
            return keras.layers.LayerNormalization(
                axis=[1, 2, 3] if place in ("C1", "C3") else -1, epsilon=self.epsilon, name=name
            )
        if self.bn_layer == "keras":
            # Keras's synchronized path computes E[x^2] - E[x]^2 even on one
            # device, so it is asked for only under a strategy, where it matters.
            return keras.layers.BatchNormalization(
                epsilon=self.epsilon,
                momentum=momentum_matching_window(self.window_size),
                name=name,
                synchronized=self.bn_sync == "global" and tf.distribute.has_strategy(),
            )
        return BatchNorm(
            epsilon=self.epsilon, window_size=self.window_size, synchronized=self.bn_sync == "global", name=name
        )

    def _stage(self, name, x, training):
        """One affine layer and its sigmoid, with BN (where there is BN) before
        the sigmoid or after it: (what the sigmoid receives, what goes on)."""
        z = self.affine[name](x)
        normalized = name in self.norm
        if normalized and self.bn_placement == "before":
            z = self.normalize(name, z, training)
        a = ops.sigmoid(z)
        if normalized and self.bn_placement == "after":
            a = self.normalize(name, a, training)
        return z, a

    def normalize(self, name, x, training):
        """The normalization at `name` (a subclass may add to it: study/noisy_bn.py)."""
        return self.norm[name](x, training=training)

    def layer_outputs(self, images, training=False):
        """Every stage's output, by name. C1, C3, C5 and F6 are the sigmoids'
        inputs (after BN where BN comes before them); S2 and S4 the pooled maps."""
        out = {}
        out["C1"], a = self._stage("C1", images, training)
        out["S2"] = self.pool(a)
        out["C3"], a = self._stage("C3", out["S2"], training)
        out["S4"] = self.pool(a)
        out["C5"], a = self._stage("C5", self.flatten(out["S4"]), training)
        out["F6"], a = self._stage("F6", a, training)
        out["logits"] = self.classifier(a)
        return out

    def call(self, images, training=False):
        return self.layer_outputs(images, training)["logits"]

    @tf.function
    def record_statistics(self, images):
        """A training-mode forward pass and nothing else: every BN layer records
        this batch's statistics (training/precise.py refills with it). Compiled once per
        model, because running it eagerly cost more than a tenth of a second."""
        self(images, training=True)

    @classmethod
    def from_config(cls, config):
        """Also a model saved before the knobs kept their table's names:
        `synchronized` (now `bn_sync`) and `keras_momentum` (now derived from
        window_size)."""
        config = dict(config)
        config.pop("keras_momentum", None)
        if "synchronized" in config:
            config["bn_sync"] = "global" if config.pop("synchronized") else "replica"
        return cls(**config)

    def get_config(self):
        return {
            **super().get_config(),
            "bn_after": list(self.bn_after),
            "bn_layer": self.bn_layer,
            **{knob: getattr(self, knob) for knob in self.KNOBS},
        }


def momentum_matching_window(window_size):
    """The momentum at which Keras's exponential moving average has the same
    mean age as a window of `window_size` batches: (w - 1) / 2 batches.

    Keras's default, 0.99, averages over about 100 batches and lags far behind
    in a short run, so the reference uses this one to be comparable with ours.
    """
    return (window_size - 1) / (window_size + 1)


def network_knobs(config):
    """`config`'s knobs that LeNet5 takes, under their names (LeNet5.KNOBS)."""
    return {knob: getattr(config, knob) for knob in LeNet5.KNOBS}


def build_lenet(name, config):
    """The named variant, built for 32x32x1 inputs, with `config`'s knobs
    that LeNet5 takes (LeNet5.KNOBS; `config` a main.Config)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    if name in REFERENCES:  # in lenet_fc_bn2's places
        model = LeNet5(bn_after=VARIANTS["lenet_fc_bn2"], bn_layer=REFERENCES[name], name=name, **network_knobs(config))
    else:
        model = LeNet5(bn_after=VARIANTS[name], name=name, **network_knobs(config))
    model(ops.zeros((1, *INPUT_SHAPE)))  # creates the weights; inference leaves BN state alone
    return model


def copy_network(source, target):
    """Copy the affine layers', the classifier's and BN's gamma and beta from
    one LeNet5 to another with the same BN places (BN's statistics stay)."""
    for name, layer in source.affine.items():
        target.affine[name].set_weights(layer.get_weights())
    target.classifier.set_weights(source.classifier.get_weights())
    for name, norm in source.norm.items():
        target.norm[name].gamma.assign(norm.gamma)
        target.norm[name].beta.assign(norm.beta)


def rebuild(model, window_size=None, network_class=LeNet5):
    """A copy of `model` (ours, any BN places), as another `network_class`
    or with another window size; its BN statistics are left for the caller
    to fill."""
    config = {key: value for key, value in model.get_config().items() if key in ("bn_after", *LeNet5.KNOBS)}
    if window_size is not None:
        config["window_size"] = window_size
    copy = network_class(**config, name=model.name)
    copy(np.zeros((1, *INPUT_SHAPE), np.float32))
    copy_network(model, copy)
    return copy
