"""Train and evaluate LeNet-5 with and without batch normalization on MNIST.

    python main.py --model lenet_bn2 --data data/mnist-subset.npz
    python main.py --model all

Every knob is one row of KNOBS below: its default (edit it there), whether a
training's numbers depend on it, and how its flag reads it; a flag overrides
the default (python main.py --help). The flags and Config are made from the
table, and the code reads each knob under its row's name (config.NAME): a
new knob is a row here and the line that reads it.
"""

import argparse
import os
import signal
import sys

from common.config import (
    BN_PLACEMENTS,
    BN_STATISTICS,
    BN_SYNC,
    DATASETS,
    MODEL_NAMES,
    PRECISIONS,
    config_class,
    describe,
)
from harness.flags import (
    LIMITS,
    OneLineErrorParser,
    auto_or_int_up_to,
    auto_or_switch,
    float_up_to,
    float_up_to_or_none,
    fraction,
    int_up_to,
)


def knob(default, training=False, **flag):
    """One row of KNOBS: the default, whether a training's numbers depend on
    the knob (summary.json's settings, --resume's identity), and its flag's
    argparse options (type or choices, help)."""
    return {"default": default, "training": training, "flag": flag}


KNOBS = {
    "model": knob(
        "all",
        choices=[*MODEL_NAMES, "all"],
        metavar="NAME",
        help="; ".join(describe(name) for name in MODEL_NAMES)
        + "; all: the five variants (side by side under --jobs auto, one after the other under --jobs 1)",
    ),
    "batch_size": knob(
        64,
        training=True,
        type=int_up_to(LIMITS["batch_size"]),
        help=f"mini-batch size for training and for the precise refill (1 to {LIMITS['batch_size']})",
    ),
    "output_size": knob(
        10,
        training=True,
        type=int_up_to(LIMITS["output_size"]),
        help=f"number of classes (units of the output layer; 1 to {LIMITS['output_size']})",
    ),
    "epochs": knob(
        10,
        training=True,
        type=int_up_to(LIMITS["epochs"]),
        help=f"passes over the training split (1 to {LIMITS['epochs']})",
    ),
    "patience": knob(
        0,
        training=True,
        type=int_up_to(LIMITS["epochs"], low=0),
        help="0: train all --epochs; N: stop once validation accuracy has not improved for N epochs in a row "
        "(--epochs is then the most): training to convergence, told apart from a fixed budget",
    ),
    "optimizer": knob("adam", training=True, help="Keras optimizer name (adam, sgd, rmsprop, ...)"),
    "learning_rate": knob(
        None,
        training=True,
        type=float_up_to_or_none(LIMITS["learning_rate"]),
        help=f"optimizer learning rate, up to {LIMITS['learning_rate']:g}; None: the optimizer's own default "
        "(0.001 for adam)",
    ),
    "epsilon": knob(
        1e-8,
        training=True,
        type=float_up_to(LIMITS["epsilon"]),
        help="BN's epsilon, added to the variance before the square root so that a "
        f"channel with (near) zero variance does not divide by zero (up to {LIMITS['epsilon']:g})",
    ),
    "window_size": knob(
        5,
        training=True,
        type=int_up_to(LIMITS["window_size"]),
        help="BN at inference normalizes with the average mean and variance of this many "
        f"training mini-batches (which ones: --bn_statistics; 1 to {LIMITS['window_size']})",
    ),
    "init_std": knob(
        None,
        training=True,
        type=float_up_to_or_none(LIMITS["init_std"]),
        help="None: Keras's own initializers (Glorot uniform); X: every affine layer's weights drawn from a normal "
        f"distribution of standard deviation X, up to {LIMITS['init_std']:g} (how the initial scale matters with "
        "and without BN)",
    ),
    "bn_placement": knob(
        "before",
        training=True,
        choices=BN_PLACEMENTS,
        help="before: BN between each affine map and its sigmoid, the affine map without bias (the BN paper, "
        "section 3.2); after: BN after the sigmoid, the affine map with its bias",
    ),
    "bn_statistics": knob(
        "precise",
        training=True,
        choices=BN_STATISTICS,
        help="what fills BN's inference window: precise refills it at every epoch's end, before "
        "validation, from window_size training batches passed through the trained, frozen weights "
        "(the paper's Algorithm 2); moving keeps the statistics of the last window_size training "
        "steps, taken while the weights were still changing",
    ),
    "precision": knob(
        "float32",
        training=True,
        choices=PRECISIONS,
        help="Keras dtype policy: float32, or float16 / bfloat16 arithmetic with float32 weights "
        "(faster on GPUs with tensor cores and CPUs with bfloat16 units; BN's statistics stay float32)",
    ),
    "devices": knob(
        1,
        training=True,
        type=int_up_to(LIMITS["devices"]),
        help="train on this many devices with tf.distribute.MirroredStrategy, batch_size staying the global "
        "batch, split evenly: the GPUs where the machine has that many, else logical CPU devices sharing the "
        f"cores (1 to {LIMITS['devices']})",
    ),
    "bn_sync": knob(
        "global",
        training=True,
        choices=BN_SYNC,
        help="with several devices, BN normalizes each device's shard of the batch with the global batch's "
        "statistics (global: summed across devices, as Keras's synchronized=True) or with the shard's own "
        "(replica; the window then records their average). One device: no difference",
    ),
    "verbose": knob(
        1,
        training=True,
        type=int,
        choices=[0, 1, 2],
        help="Keras training output: 0 silent, 1 progress bar, 2 one line per epoch",
    ),
    "flag_visualizations": knob(1, type=int, choices=[0, 1], help="1: write the PNG plots; 0: skip them"),
    "tensorboard": knob(
        0,
        type=int,
        choices=[0, 1],
        help="1: write TensorBoard logs (per-epoch scalars, BN statistics histograms) under "
        "RESULTS_DIR/logs/MODEL/; view them with tensorboard --logdir RESULTS_DIR/logs",
    ),
    "resume": knob(
        0,
        type=int,
        choices=[0, 1],
        help="1: rerun a sweep without redoing work: a model whose summary.json entry has the same settings "
        "and data is skipped, and a model interrupted mid-training continues from its last finished epoch "
        "(backed up under RESULTS_DIR/backup/MODEL/ until it finishes); 0: train every model afresh",
    ),
    "jit_compile": knob(
        "auto",
        training=True,
        type=auto_or_switch,
        help="1: compile each training and inference step with XLA; 0: run TensorFlow's own kernels; auto: XLA "
        "on a GPU, TensorFlow's kernels on a CPU (the faster there at batch 16 and up; at batch 2 XLA is, "
        "docs/speed.md). Results differ only by float rounding",
    ),
    "inference_batch_size": knob(
        1024,
        training=True,
        type=int_up_to(LIMITS["batch_size"]),
        help="batch size for validation and test: larger is faster, and at inference BN uses its window, "
        f"never the batch, so results change only by float rounding (1 to {LIMITS['batch_size']})",
    ),
    "jobs": knob(
        "auto",
        type=auto_or_int_up_to(LIMITS["jobs"]),
        help="how many models train at once, each in its own worker process of a local Dask cluster with "
        "cores // jobs TensorFlow threads; auto: the machine's cores, at most one per model (one model trains "
        f"in this process); 1: one after the other in this process (1 to {LIMITS['jobs']})",
    ),
    "cluster": knob(
        None,
        help="the address of a running Dask scheduler (tcp://HOST:8786; default: "
        "$DASK_SCHEDULER_ADDRESS if set): the models train on its workers, this process writes the results",
    ),
    "seed": knob(
        0,
        training=True,
        type=int_up_to(LIMITS["seed"], low=0),
        help=f"fixes the train/validation split, the initial weights and the shuffling (0 to {LIMITS['seed']})",
    ),
    "val_split": knob(0.15, type=fraction, help="fraction of the training set held out for validation"),
    "data": knob(
        None,
        help="a Keras-format .npz (x_train, y_train, x_test, y_test) or a folder with "
        "the four MNIST IDX files (raw or .gz); None: download --dataset with Keras",
    ),
    "dataset": knob("mnist", choices=DATASETS, help="what Keras downloads when --data is None"),
    "results_dir": knob("results", help="where histories, plots and summary.json are written"),
}
DEFAULTS = {name: row["default"] for name, row in KNOBS.items()}
# The one configuration, a frozen dataclass with a field per knob, built from the table.
Config = config_class(KNOBS, __name__)


def add_flag(parser, name, *option_strings, **changes):
    """Add main.py's flag `name` to `parser`, parsed as main.py parses it (its
    type and bounds), with its help and DEFAULTS's default unless `changes`
    say otherwise; under `option_strings` (such as --seeds for several
    seeds) where given."""
    parser.add_argument(
        *(option_strings or [f"--{name}"]), **{"default": DEFAULTS[name], **KNOBS[name]["flag"], **changes}
    )


def build_parser():
    parser = OneLineErrorParser(
        prog="main.py",
        description="Train LeNet-5 variants with and without batch normalization on MNIST; "
        "write their histories, plots and test results to --results_dir.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for name in DEFAULTS:
        add_flag(parser, name)
    return parser


def main(argv=None):
    parser = build_parser()
    config = Config(**vars(parser.parse_args(argv)))
    if config.data is not None and config.dataset != DEFAULTS["dataset"]:
        print(
            f"{parser.prog}: error: --dataset {config.dataset} names what Keras downloads, but --data "
            f"{config.data} is given: drop one of the two",
            file=sys.stderr,
        )
        return 2
    if __name__ == "__main__":
        # Ctrl-C while TensorFlow loads: nothing to keep, so leave at once. (A
        # KeyboardInterrupt could be swallowed by a library's import code.)
        signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))
    import utils

    utils.import_tensorflow_quietly()  # quietly, before the sweep's modules import it
    from harness import sweep

    return sweep.main(config, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
