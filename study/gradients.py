"""What the "why BN helps" studies measure a network with (Santurkar et al.,
2018): its loss and gradient on one batch at any weights, layer by layer.

`BatchLoss` sets a network's weights from one flat vector (the layers in
order, input to output), runs one batch in training mode (BN with the
batch's statistics, as a training step sees it) and gives the loss and the
flat gradient. Every evaluation starts from the same non-trainable state,
so a network with random noise in it (study/noisy_bn.py) draws the same
noise at every evaluation of one batch: what differs between two
evaluations is the weights alone. The caller restores the weights
(training.callbacks.restored_afterwards)."""

import numpy as np
import tensorflow as tf


def layer_groups(model):
    """[(layer name, its trainable variables)] from input to output: each
    affine layer with the gamma and beta of the BN that follows it, then the
    classifier (LeNet5, and figure1's PaperMLP)."""
    affine = model.affine if hasattr(model, "affine") else model.hidden
    groups = []
    for name, layer in affine.items():
        norm = model.norm[name].trainable_variables if name in model.norm else []
        groups.append((name, [*layer.trainable_variables, *norm]))
    groups.append(("output", list(model.classifier.trainable_variables)))
    return groups


def bn_fed_kernels(model):
    """{layer name: kernel} of the affine layers whose output goes straight
    into BN. BN's output does not change when such a kernel's output channel
    is scaled by any positive number (the layer has no bias; up to epsilon):
    the loss has no curvature along that direction, and the rest of it
    scales as 1 / ||w||^2."""
    affine = model.affine if hasattr(model, "affine") else model.hidden
    if getattr(model, "bn_placement", "before") != "before":
        return {}
    return {name: affine[name].kernel for name in model.norm}


class BatchLoss:
    """L(theta) and its gradient on one batch, theta a flat float64 vector of
    `model`'s trainable weights in layer_groups' order."""

    def __init__(self, model):
        self.model = model
        self.groups = layer_groups(model)
        self.variables = [variable for _, group in self.groups for variable in group]
        self.sizes = [int(np.prod(variable.shape)) for variable in self.variables]
        # Each layer's part of theta, as a slice.
        self.layer_slices, start = {}, 0
        for name, group in self.groups:
            size = sum(int(np.prod(variable.shape)) for variable in group)
            self.layer_slices[name] = slice(start, start + size)
            start += size
        self.kernel_slices = {}
        positions = np.cumsum([0, *self.sizes])
        for name, kernel in bn_fed_kernels(model).items():
            index = next(i for i, variable in enumerate(self.variables) if variable is kernel)
            self.kernel_slices[name] = (slice(positions[index], positions[index + 1]), tuple(kernel.shape))
        self.compiled = tf.function(self._loss_and_gradients)  # traced once per model, not once per probe
        self.images = self.labels = self.state = None

    def set_batch(self, images, labels):
        """The batch every later evaluation uses, and the state it starts from."""
        self.images, self.labels = tf.constant(images), tf.constant(labels)
        self.state = [variable.numpy() for variable in self.model.non_trainable_variables]

    def _loss_and_gradients(self, parts, images, labels):
        for variable, part in zip(self.variables, parts):
            variable.assign(part)
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(images, training=True), tf.float32)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        return loss, tape.gradient(loss, self.variables)

    def weights(self):
        return np.concatenate([np.asarray(variable.numpy(), np.float64).ravel() for variable in self.variables])

    def __call__(self, theta):
        for variable, value in zip(self.model.non_trainable_variables, self.state):
            variable.assign(value)
        pieces = np.split(theta, np.cumsum(self.sizes)[:-1])
        parts = [tf.constant(piece.reshape(v.shape), v.dtype) for piece, v in zip(pieces, self.variables)]
        loss, gradients = self.compiled(parts, self.images, self.labels)
        return float(loss), np.concatenate([np.asarray(gradient, np.float64).ravel() for gradient in gradients])

    def kernel_norms(self, theta):
        """{layer: ||kernel||} of the BN-fed kernels in theta."""
        return {name: float(np.linalg.norm(theta[part])) for name, (part, _) in self.kernel_slices.items()}

    def unit_filters(self, theta):
        """theta with each BN-fed kernel's output channels scaled to norm 1:
        the same function of the input, in coordinates free of that scale."""
        theta = theta.copy()
        for part, shape in self.kernel_slices.values():
            kernel = theta[part].reshape(shape)
            norms = np.sqrt(np.sum(kernel**2, axis=tuple(range(len(shape) - 1)), keepdims=True))
            theta[part] = (kernel / np.maximum(norms, 1e-30)).ravel()
        return theta


def internal_covariate_shift(loss, theta, learning_rate):
    """Santurkar et al.'s Definition 2.1 at `theta` on `loss`'s batch, for
    each layer i: G = its gradient with every layer as it is; G' = its
    gradient after the layers before it took this batch's SGD step
    (theta - learning_rate * gradient), itself and the later ones not. The
    first layer, with no layer below it, is left out.
    {layer: {"l2": ||G - G'||, "cosine": cos(G, G'), "relative": ||G - G'|| / ||G||}}."""
    _, gradient = loss(theta)
    stepped = theta - learning_rate * gradient
    shift = {}
    for name, part in loss.layer_slices.items():
        if part.start == 0:  # the first layer: nothing below it moves
            continue
        moved = theta.copy()
        moved[: part.start] = stepped[: part.start]
        before, after = gradient[part], loss(moved)[1][part]
        norms = np.linalg.norm(before) * np.linalg.norm(after)
        difference = float(np.linalg.norm(before - after))
        shift[name] = {
            "l2": difference,
            "cosine": float(before @ after / norms) if norms else 1.0,
            "relative": difference / float(np.linalg.norm(before)) if norms else 0.0,
        }
    return shift
