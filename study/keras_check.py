"""keras_check: our BN layer against keras.layers.BatchNormalization in the same
network, from the same initial weights, on the same batches."""

import utils
import visualizations
from common import records
from common.config import KERAS_BN_VARIANT
from study.common import run_trainings, study_dir, write_rows, write_summary

ABOUT = "Hand-written BN against keras.layers.BatchNormalization in lenet_fc_bn2, same initial weights and batches."


def add_arguments(parser, flag):
    flag(parser, "bn_statistics")


def keras_reference(config):
    """lenet_keras_bn, compiled, with the initial weights of our lenet_fc_bn2
    at the same seed (the same seed gives the same weights; this makes sure)."""
    import models_handling
    from lenet import copy_network

    ours = models_handling.build_and_compile("lenet_fc_bn2", config)
    reference = models_handling.build_and_compile(KERAS_BN_VARIANT, config)
    copy_network(ours, reference)
    return reference


def run(config, args):
    """Ours against keras.layers.BatchNormalization in the same network, from the
    same initial weights, on the same batches: their curves should coincide."""
    from harness.executor import Training
    from lenet import momentum_matching_window

    data = utils.load(config)
    ours = Training("lenet_fc_bn2", config, label="ours")
    reference = Training(KERAS_BN_VARIANT, config, label="keras", build=keras_reference)
    results = dict(zip(("ours", "keras"), run_trainings(config, [ours, reference], data)))

    folder = study_dir(config, "keras_check")
    rows, gaps = [], {}
    for epoch in range(config.epochs):
        row = {"epoch": epoch + 1}
        for label, result in results.items():
            for key in records.HISTORY_KEYS:
                row[f"{label}_{key}"] = result.history[key][epoch]
        rows.append(row)
    for key in records.HISTORY_KEYS:
        gaps[key] = max(abs(row[f"ours_{key}"] - row[f"keras_{key}"]) for row in rows)
    write_rows(folder / "keras_check.csv", rows)
    visualizations.plot_side_by_side(
        {"ours (lenet_fc_bn2)": results["ours"].history, "keras.layers.BatchNormalization": results["keras"].history},
        folder / "keras_check.png",
        "hand-written BN against Keras's layer, same initial weights and batches",
    )
    summary = {
        "bn_statistics": config.bn_statistics,
        "largest_gap_over_epochs": gaps,
        "test_accuracy": {label: result.test_accuracy for label, result in results.items()},
        "keras_momentum": momentum_matching_window(config.window_size),
        "epochs": config.epochs,
        "seed": config.seed,
    }
    write_summary(folder, summary)
    print("largest gap between the two networks over the epochs:")
    for key, gap in gaps.items():
        print(f"  {key:<14}{gap:.4f}")
    return summary
