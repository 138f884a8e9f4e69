"""What batch normalization does here: eleven studies, each one command.

    python studies.py --help                              # the eleven, a line each
    python studies.py seeds --data data/mnist-subset.npz  # one of them (docs/studies.md: each one)

Each writes PNGs, a CSV of its numbers and a summary.json into
<results_dir>/<study>/ (default results/studies/<study>/). Every setting not
listed by `python studies.py NAME --help` is main.py's DEFAULTS; the flags
listed parse as main.py's of the same name.

Each study is a module of the study package (study/<name>.py: its ABOUT line,
its flags in add_arguments, the study in run(config, args)); what they share
is in study/common.py. Another study is a new module and a line in STUDIES.
"""

import argparse
import sys

import utils
from common import files
from harness.flags import OneLineErrorParser
from main import DEFAULTS, Config, add_flag

# The study modules import TensorFlow's side (models_handling, study.networks,
# study.probes) inside their functions: `--help` and a refused flag answer at once.
from study import batch_size, figure1, grid, init, keras_check, landscape, lr, noisy_bn, replicas, seeds, window
from study.common import study_dir

STUDIES = {
    "keras_check": keras_check,
    "seeds": seeds,
    "figure1": figure1,
    "lr": lr,
    "window": window,
    "replicas": replicas,
    "grid": grid,
    "batch_size": batch_size,
    "init": init,
    "landscape": landscape,
    "noisy_bn": noisy_bn,
}
# main.py's flags that every study takes (seed but in those that take several).
SEVERAL_SEEDS = ("seeds", "figure1", "grid", "batch_size", "init", "landscape", "noisy_bn")
SHARED_FLAGS = ("data", "dataset", "epochs", "results_dir", "verbose", "jit_compile", "jobs", "cluster", "seed")


class SeveralSeeds(argparse.Action):
    """--seed in a study that trains several seeds: one line naming --seeds."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"this study trains several seeds: write --seeds {values}, (seed {values} alone) or --seeds N")


def build_parser():
    parser = OneLineErrorParser(
        prog="studies.py",
        description="Studies of what batch normalization does to LeNet-5; each writes PNGs, a CSV and "
        "summary.json into RESULTS_DIR/NAME/.",
    )
    names = parser.add_subparsers(dest="study", required=True, metavar="NAME", parser_class=OneLineErrorParser)
    for name, study in STUDIES.items():
        sub = names.add_parser(
            name,
            help=study.ABOUT.replace("%", "%%"),
            description=study.ABOUT,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        for flag in SHARED_FLAGS:
            if flag == "seed" and name in SEVERAL_SEEDS:
                sub.add_argument("--seed", action=SeveralSeeds, default=DEFAULTS["seed"], help=argparse.SUPPRESS)
                continue
            if flag == "epochs" and hasattr(study, "EPOCHS"):  # a study whose trainings need more than main.py's
                add_flag(sub, flag, default=study.EPOCHS)
            elif flag == "results_dir":
                add_flag(sub, flag, default="results/studies", help="the study writes into RESULTS_DIR/NAME/")
            else:
                add_flag(sub, flag)
        study.add_arguments(sub, add_flag)
    return parser


def configuration(args):
    """main.py's DEFAULTS with the study's flags that name a setting applied."""
    return Config.of(DEFAULTS, **{key: value for key, value in vars(args).items() if key in DEFAULTS})


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    study, config = STUDIES[args.study], configuration(args)
    utils.import_tensorflow_quietly()  # quietly, before the study's own imports do
    data = config.data or f"keras.datasets.{config.dataset}"
    print(f"study {args.study}: {study.ABOUT}", flush=True)
    print(
        f"data {data}, {config.epochs} epochs per training run; results into {study_dir(config, args.study)}/",
        flush=True,
    )
    try:
        study.run(config, args)
    except utils.UsageError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except files.WriteError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "\ninterrupted: the studies built on the grid keep the CSV of every run that finished (lr, grid, "
            "batch_size and init: --resume 1 trains only the rest); the others write their files only when they end",
            file=sys.stderr,
        )
        return 130
    print(f"written to {study_dir(config, args.study)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
