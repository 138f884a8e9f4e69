"""The configuration: one frozen object made from main.py's table of knobs
and the flags, and passed whole to whatever needs it (the model builder, the
training, the studies). It also names what the command line may choose from.

Nothing here imports TensorFlow or numpy: the command line answers --help and
refuses a bad flag before TensorFlow starts.
"""

from dataclasses import make_dataclass, replace

# Where each variant puts batch normalization: after these affine layers of
# LeNet-5, before their sigmoid (lenet.LeNet5). The names are part of the
# command-line interface.
VARIANTS = {
    "lenet": (),
    "lenet_bn1": ("C1",),
    "lenet_bn2": ("C1", "C3"),
    "lenet_fc_bn1": ("C1", "C3", "C5"),
    "lenet_fc_bn2": ("C1", "C3", "C5", "F6"),
}
# References in lenet_fc_bn2's places, by the layer that normalizes there:
# Keras's own BatchNormalization, GroupNorm and LayerNorm (Wu and He, 2018).
KERAS_BN_VARIANT = "lenet_keras_bn"
REFERENCES = {KERAS_BN_VARIANT: "keras", "lenet_gn": "group", "lenet_ln": "layer"}
MODEL_NAMES = (*VARIANTS, *REFERENCES)
# The choices of main.py's knobs of these names (its KNOBS says what each means).
BN_PLACEMENTS = ("before", "after")
BN_STATISTICS = ("precise", "moving")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
BN_SYNC = ("global", "replica")
DATASETS = ("mnist", "fashion_mnist")  # what Keras downloads when no --data is given


class Settings:
    """What every Config has besides its fields (main.py's `config_class`
    makes Config from the knobs' table)."""

    TRAINING_KEYS = ()  # the knobs a training's numbers depend on, in the table's order

    def __post_init__(self):
        # The flag takes 0 / 1 / auto; the training reads a bool or "auto".
        if self.jit_compile != "auto":
            object.__setattr__(self, "jit_compile", bool(self.jit_compile))

    @classmethod
    def of(cls, defaults, **changes):
        """`defaults` (main.py's DEFAULTS) with `changes` applied; a key that
        is not a setting is a TypeError, as a misspelt keyword is."""
        return replace(cls(**defaults), **changes)

    def training_settings(self):
        """What a training depends on, as summary.json records it."""
        return {key: getattr(self, key) for key in self.TRAINING_KEYS}


def config_class(knobs, module):
    """Config: a frozen dataclass with one field per row of `knobs` (main.py's
    table, {name: {"default", "training", "flag"}}), in `module`'s name so
    that it pickles by reference (Dask sends configurations to workers)."""
    return make_dataclass(
        "Config",
        list(knobs),
        bases=(Settings,),
        frozen=True,
        namespace={
            "__module__": module,
            "TRAINING_KEYS": tuple(name for name, row in knobs.items() if row["training"]),
        },
    )


def describe(name):
    """A variant's name with where it puts batch normalization."""
    if name in REFERENCES:
        layer = {"keras": "keras.layers.BatchNormalization", "group": "GroupNorm", "layer": "LayerNorm"}[
            REFERENCES[name]
        ]
        return f"{name} ({layer} after C1, C3, C5, F6)"
    places = VARIANTS[name]
    return f"{name} (BN after {', '.join(places)})" if places else f"{name} (no BN)"
