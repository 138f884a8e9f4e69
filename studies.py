"""What batch normalization does here: six studies, each one command.

    python studies.py keras_check --data mnist.npz   # ours against keras.layers.BatchNormalization
    python studies.py seeds --data mnist.npz         # the five variants over seeds, both statistics rules
    python studies.py figure1 --data mnist.npz       # the BN paper's Figure 1 on LeNet-5
    python studies.py lr --data mnist.npz            # plain SGD at learning rates 0.01 to 10
    python studies.py window --data mnist.npz        # inference statistics: rule, window and batch size
    python studies.py replicas --data mnist.npz      # the batch split over 1 to 8 devices, BN synchronized or not

Each writes PNGs, a CSV of its numbers and a summary.json into
<results_dir>/<study>/ (default results/studies/<study>/). Training goes
through models_handling, exactly as main.py trains; every default not listed
by `python studies.py NAME --help` is main.py's DEFAULTS.

Each study is a module of its own (study_<name>.py: its ABOUT line, its
flags in add_arguments, the study in run); what they share is in
study_common.py. A seventh study is a new module and a line in STUDIES.
"""

import argparse
import sys

import utils

utils.import_tensorflow_quietly()  # before the modules below import it

import study_figure1  # noqa: E402
import study_keras_check  # noqa: E402
import study_lr  # noqa: E402
import study_replicas  # noqa: E402
import study_seeds  # noqa: E402
import study_window  # noqa: E402
from command_line import (  # noqa: E402
    LIMITS,
    OneLineErrorParser,
    auto_or_int_up_to,
    auto_or_switch,
    int_up_to,
)
from main import DEFAULTS  # noqa: E402
from study_common import study_dir  # noqa: E402

STUDIES = {
    "keras_check": study_keras_check,
    "seeds": study_seeds,
    "figure1": study_figure1,
    "lr": study_lr,
    "window": study_window,
    "replicas": study_replicas,
}


def build_parser():
    parser = OneLineErrorParser(
        prog="studies.py",
        description="Studies of what batch normalization does to LeNet-5; each writes PNGs, a CSV and "
        "summary.json into RESULTS_DIR/NAME/.",
    )
    names = parser.add_subparsers(dest="study", required=True, metavar="NAME",
                                  parser_class=OneLineErrorParser)
    for name, study in STUDIES.items():
        sub = names.add_parser(name, help=study.ABOUT, description=study.ABOUT,
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        sub.add_argument("--data", default=DEFAULTS["data"], help="as main.py --data: a .npz or IDX folder; "
                         "None downloads --dataset with Keras")
        sub.add_argument("--dataset", default=DEFAULTS["dataset"], choices=["mnist", "fashion_mnist"],
                         help="what Keras downloads when --data is None")
        sub.add_argument("--epochs", type=int_up_to(LIMITS["epochs"]), default=DEFAULTS["epochs"],
                         help="passes over the training split, for every network the study trains")
        sub.add_argument("--results_dir", default="results/studies", help="the study writes into RESULTS_DIR/NAME/")
        sub.add_argument("--verbose", type=int, choices=[0, 1, 2], default=DEFAULTS["verbose"],
                         help="Keras's training output: 0 silent, 1 progress bar, 2 one line per epoch")
        sub.add_argument("--jit_compile", type=auto_or_switch, default=DEFAULTS["jit_compile"],
                         help="as main.py --jit_compile: 1 XLA, 0 TensorFlow's kernels, auto the faster")
        sub.add_argument("--jobs", type=auto_or_int_up_to(LIMITS["jobs"]), default=DEFAULTS["jobs"],
                         help="as main.py --jobs: trainings side by side in worker processes; auto: the "
                         "machine's cores, at most one per training; 1: one after the other in this process")
        sub.add_argument("--cluster", default=DEFAULTS["cluster"],
                         help="as main.py --cluster: a Dask scheduler's address; the trainings run on its workers")
        if name != "seeds":  # seeds takes several (--seeds)
            sub.add_argument("--seed", type=int_up_to(LIMITS["seed"], low=0), default=DEFAULTS["seed"],
                             help="fixes the split, the initial weights and the shuffling")
        study.add_arguments(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    study = STUDIES[args.study]
    data = args.data or f"keras.datasets.{args.dataset}"
    print(f"study {args.study}: {study.ABOUT}", flush=True)
    print(f"data {data}, {args.epochs} epochs per training run; results into {study_dir(args, args.study)}/",
          flush=True)
    try:
        study.run(args)
    except utils.UsageError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: seeds and lr keep the CSV of every run that finished; the other studies "
              "write their files only when they end", file=sys.stderr)
        return 130
    print(f"written to {study_dir(args, args.study)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
