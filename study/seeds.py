"""seeds: the variants over several seeds, under each statistics rule."""

from dataclasses import replace

import numpy as np

import utils
import visualizations
from harness import results_folder
from harness.config import BN_STATISTICS, VARIANTS
from harness.executor import Training
from study.common import run_trainings, study_dir, write_rows, write_summary

ABOUT = "The variants over several seeds, under each statistics rule: mean and standard deviation bands."


def add_arguments(parser, flag):
    parser.add_argument(
        "--rules",
        nargs="+",
        choices=BN_STATISTICS,
        default=list(BN_STATISTICS),
        metavar="RULE",
        help="the --bn_statistics rules to train under (precise, moving)",
    )
    flag(
        parser,
        "seed",
        "--seeds",
        nargs="+",
        default=[0, 1, 2],
        help="each fixes the split, the initial weights and the shuffling of one run",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        metavar="MODEL",
        help="which of the five variants to train",
    )


def run(config, args):
    """The variants over several seeds (split, initial weights and shuffling),
    under each statistics rule: mean and standard deviation of every curve and
    of the test accuracy."""
    data = utils.load(config)
    plan = [
        Training(name, replace(config, seed=seed, bn_statistics=rule), label=f"seed {seed}, {rule} statistics: {name}")
        for seed in args.seeds
        for rule in args.rules
        for name in args.models
    ]
    rows = [None] * len(plan)

    def record(index, done):
        training, result = plan[index], done.result
        rows[index] = {
            "model": training.name,
            "bn_statistics": training.config.bn_statistics,
            "seed": training.config.seed,
            "test_accuracy": result.test_accuracy,
            "test_loss": result.test_loss,
        }
        # kept if the study is interrupted, in the order of the plan
        write_rows(study_dir(config, "seeds") / "seeds.csv", [row for row in rows if row])

    finished = run_trainings(config, plan, data, record)
    histories = {(rule, name): [] for rule in args.rules for name in args.models}
    for training, done in zip(plan, finished):
        histories[training.config.bn_statistics, training.name].append(done.result.history)

    def across_seeds(rule, statistic):
        return {
            name: {
                key: statistic([h[key] for h in histories[rule, name]], axis=0).tolist()
                for key in results_folder.HISTORY_KEYS
            }
            for name in args.models
        }

    folder = study_dir(config, "seeds")
    summary = {"seeds": args.seeds, "epochs": config.epochs, "test_accuracy": {}}
    for rule in args.rules:
        for metric in ("accuracy", "loss"):
            visualizations.plot_comparison(
                across_seeds(rule, np.mean),
                metric,
                folder / f"seeds_{rule}_{metric}.png",
                across_seeds(rule, np.std),
                title_prefix=f"{rule} statistics, mean +- std over {len(args.seeds)} seeds: ",
            )
        print(f"\n{'model':<16}test accuracy over seeds {args.seeds}, {rule} statistics")
        summary["test_accuracy"][rule] = {}
        for name in args.models:
            accuracies = [row["test_accuracy"] for row in rows if (row["model"], row["bn_statistics"]) == (name, rule)]
            summary["test_accuracy"][rule][name] = {
                "mean": float(np.mean(accuracies)),
                "std": float(np.std(accuracies)),
                "per_seed": accuracies,
            }
            print(f"{name:<16}{np.mean(accuracies):.4f} +- {np.std(accuracies):.4f}")
    write_summary(folder, summary)
    return summary
