"""Train and evaluate LeNet-5 with and without batch normalization on MNIST.

    python main.py --model lenet_bn2
    python main.py --model all --data mnist.npz

Edit a default in DEFAULTS below; any flag overrides it (python main.py --help).
"""

DEFAULTS = {
    "model": "all",  # one of the variants (lenet, lenet_bn1, ...), lenet_keras_bn, or "all" (the five variants)
    "batch_size": 64,
    "output_size": 10,
    "epochs": 10,
    "patience": 0,  # 0: train all the epochs; N: stop once validation accuracy has not improved for N epochs
    "optimizer": "adam",
    "learning_rate": None,  # None: the optimizer's own default (0.001 for adam)
    "epsilon": 1e-8,
    "window_size": 5,
    "init_std": None,  # None: Keras's initializers (Glorot); X: the affine layers' weights drawn from N(0, X^2)
    "bn_placement": "before",  # BN between the affine map and its sigmoid (the paper); "after": after the sigmoid
    "bn_statistics": "precise",  # precise: window refilled with the trained weights each epoch; moving: last steps
    "precision": "float32",  # or mixed_float16 (GPUs with tensor cores), mixed_bfloat16
    "devices": 1,  # N: the global batch split across N GPUs (or N logical CPU devices)
    "bn_sync": "global",  # several devices: BN with the global batch's statistics, or "replica": each shard's own
    "verbose": 1,
    "flag_visualizations": 1,
    "tensorboard": 0,  # 1: TensorBoard logs under <results_dir>/logs/<model>/
    "resume": 0,  # 1: skip models already finished with these settings and data; continue interrupted ones
    "jit_compile": "auto",  # auto: XLA (1) on a GPU, TensorFlow's own kernels (0) on a CPU
    "inference_batch_size": 1024,  # validation and test (BN's inference uses no batch statistics)
    "jobs": "auto",  # trainings side by side: auto, the machine's cores (at most one per model); 1: this process
    "cluster": None,  # a Dask scheduler's address (tcp://HOST:8786): the trainings run on its workers
    "seed": 0,
    "val_split": 0.15,
    "data": None,  # None: download with Keras; else a .npz or a folder of IDX files
    "dataset": "mnist",
    "results_dir": "results",
}

import argparse
import os
import signal
import sys

from common.config import BN_PLACEMENTS, BN_STATISTICS, BN_SYNC, DATASETS, MODEL_NAMES, PRECISIONS, Config, describe
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

# Every flag: its type or choices, and its help. The default is DEFAULTS's.
FLAGS = {
    "model": dict(
        choices=[*MODEL_NAMES, "all"],
        metavar="NAME",
        help="; ".join(describe(name) for name in MODEL_NAMES)
        + "; all: the five variants (side by side under --jobs auto, one after the other under --jobs 1)",
    ),
    "batch_size": dict(
        type=int_up_to(LIMITS["batch_size"]),
        help=f"mini-batch size for training and for the precise refill (1 to {LIMITS['batch_size']})",
    ),
    "output_size": dict(
        type=int_up_to(LIMITS["output_size"]),
        help=f"number of classes (units of the output layer; 1 to {LIMITS['output_size']})",
    ),
    "epochs": dict(type=int_up_to(LIMITS["epochs"]), help=f"passes over the training split (1 to {LIMITS['epochs']})"),
    "patience": dict(
        type=int_up_to(LIMITS["epochs"], low=0),
        help="0: train all --epochs; N: stop once validation accuracy has not improved for N epochs in a row "
        "(--epochs is then the most): training to convergence, told apart from a fixed budget",
    ),
    "optimizer": dict(help="Keras optimizer name (adam, sgd, rmsprop, ...)"),
    "learning_rate": dict(
        type=float_up_to_or_none(LIMITS["learning_rate"]),
        help=f"optimizer learning rate, up to {LIMITS['learning_rate']:g}; None: the optimizer's own default "
        "(0.001 for adam)",
    ),
    "epsilon": dict(
        type=float_up_to(LIMITS["epsilon"]),
        help="BN's epsilon, added to the variance before the square root so that a "
        f"channel with (near) zero variance does not divide by zero (up to {LIMITS['epsilon']:g})",
    ),
    "window_size": dict(
        type=int_up_to(LIMITS["window_size"]),
        help="BN at inference normalizes with the average mean and variance of this many "
        f"training mini-batches (which ones: --bn_statistics; 1 to {LIMITS['window_size']})",
    ),
    "init_std": dict(
        type=float_up_to_or_none(LIMITS["init_std"]),
        help="None: Keras's own initializers (Glorot uniform); X: every affine layer's weights drawn from a normal "
        f"distribution of standard deviation X, up to {LIMITS['init_std']:g} (how the initial scale matters with "
        "and without BN)",
    ),
    "bn_placement": dict(
        choices=BN_PLACEMENTS,
        help="before: BN between each affine map and its sigmoid, the affine map without bias (the BN paper, "
        "section 3.2); after: BN after the sigmoid, the affine map with its bias",
    ),
    "bn_statistics": dict(
        choices=BN_STATISTICS,
        help="what fills BN's inference window: precise refills it at every epoch's end, before "
        "validation, from window_size training batches passed through the trained, frozen weights "
        "(the paper's Algorithm 2); moving keeps the statistics of the last window_size training "
        "steps, taken while the weights were still changing",
    ),
    "precision": dict(
        choices=PRECISIONS,
        help="Keras dtype policy: float32, or float16 / bfloat16 arithmetic with float32 weights "
        "(faster on GPUs with tensor cores and CPUs with bfloat16 units; BN's statistics stay float32)",
    ),
    "devices": dict(
        type=int_up_to(LIMITS["devices"]),
        help="train on this many devices with tf.distribute.MirroredStrategy, batch_size staying the global "
        "batch, split evenly: the GPUs where the machine has that many, else logical CPU devices sharing the "
        f"cores (1 to {LIMITS['devices']})",
    ),
    "bn_sync": dict(
        choices=BN_SYNC,
        help="with several devices, BN normalizes each device's shard of the batch with the global batch's "
        "statistics (global: summed across devices, as Keras's synchronized=True) or with the shard's own "
        "(replica; the window then records their average). One device: no difference",
    ),
    "verbose": dict(
        type=int, choices=[0, 1, 2], help="Keras training output: 0 silent, 1 progress bar, 2 one line per epoch"
    ),
    "flag_visualizations": dict(type=int, choices=[0, 1], help="1: write the PNG plots; 0: skip them"),
    "tensorboard": dict(
        type=int,
        choices=[0, 1],
        help="1: write TensorBoard logs (per-epoch scalars, BN statistics histograms) under "
        "RESULTS_DIR/logs/MODEL/; view them with tensorboard --logdir RESULTS_DIR/logs",
    ),
    "resume": dict(
        type=int,
        choices=[0, 1],
        help="1: rerun a sweep without redoing work: a model whose summary.json entry has the same settings "
        "and data is skipped, and a model interrupted mid-training continues from its last finished epoch "
        "(backed up under RESULTS_DIR/backup/MODEL/ until it finishes); 0: train every model afresh",
    ),
    "jit_compile": dict(
        type=auto_or_switch,
        help="1: compile each training and inference step with XLA; 0: run TensorFlow's own kernels; auto: XLA "
        "on a GPU, TensorFlow's kernels on a CPU (the faster there at batch 16 and up; at batch 2 XLA is, "
        "docs/speed.md). Results differ only by float rounding",
    ),
    "inference_batch_size": dict(
        type=int_up_to(LIMITS["batch_size"]),
        help="batch size for validation and test: larger is faster, and at inference BN uses its window, "
        f"never the batch, so results change only by float rounding (1 to {LIMITS['batch_size']})",
    ),
    "jobs": dict(
        type=auto_or_int_up_to(LIMITS["jobs"]),
        help="how many models train at once, each in its own worker process of a local Dask cluster with "
        "cores // jobs TensorFlow threads; auto: the machine's cores, at most one per model (one model trains "
        f"in this process); 1: one after the other in this process (1 to {LIMITS['jobs']})",
    ),
    "cluster": dict(
        help="the address of a running Dask scheduler (tcp://HOST:8786; default: "
        "$DASK_SCHEDULER_ADDRESS if set): the models train on its workers, this process writes the results"
    ),
    "seed": dict(
        type=int_up_to(LIMITS["seed"], low=0),
        help=f"fixes the train/validation split, the initial weights and the shuffling (0 to {LIMITS['seed']})",
    ),
    "val_split": dict(type=fraction, help="fraction of the training set held out for validation"),
    "data": dict(
        help="a Keras-format .npz (x_train, y_train, x_test, y_test) or a folder with "
        "the four MNIST IDX files (raw or .gz); None: download --dataset with Keras"
    ),
    "dataset": dict(choices=DATASETS, help="what Keras downloads when --data is None"),
    "results_dir": dict(help="where histories, plots and summary.json are written"),
}


def add_flag(parser, name, *option_strings, **changes):
    """Add main.py's flag `name` to `parser`, parsed as main.py parses it (its
    type and bounds), with its help and DEFAULTS's default unless `changes`
    say otherwise; under `option_strings` (such as --seeds for several
    seeds) where given."""
    parser.add_argument(*(option_strings or [f"--{name}"]), **{"default": DEFAULTS[name], **FLAGS[name], **changes})


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
