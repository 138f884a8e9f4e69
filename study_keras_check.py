"""keras_check: our BN layer against keras.layers.BatchNormalization in the same
network, from the same initial weights, on the same batches."""

from dataclasses import replace

import models_handling
import results_folder
import trainings
import visualizations
from lenet import KERAS_BN_VARIANT, momentum_matching_window
from main import DEFAULTS
from study_common import (
    add_statistics_rule,
    base_settings,
    copy_network,
    load_raw,
    run_trainings,
    study_dir,
    write_rows,
    write_summary,
)

ABOUT = "Hand-written BN against keras.layers.BatchNormalization in lenet_fc_bn2, same initial weights and batches."


def add_arguments(parser):
    add_statistics_rule(parser)


def keras_reference(settings):
    """lenet_keras_bn, compiled, with the initial weights of our lenet_fc_bn2
    at the same seed (the same seed gives the same weights; this makes sure)."""
    ours = models_handling.build_and_compile("lenet_fc_bn2", settings)
    reference = models_handling.build_and_compile(KERAS_BN_VARIANT, settings)
    copy_network(ours, reference)
    return reference


def run(args):
    """Ours against keras.layers.BatchNormalization in the same network, from the
    same initial weights, on the same batches: their curves should coincide."""
    data = load_raw(args)
    settings = base_settings(args)
    ours = trainings.Training("lenet_fc_bn2", settings, DEFAULTS["val_split"], args.seed, label="ours")
    reference = trainings.Training(KERAS_BN_VARIANT, settings, DEFAULTS["val_split"], args.seed, label="keras",
                                   build=keras_reference)
    if settings.jit_compile == "auto":  # the reference on the path chosen for ours: the same arithmetic
        (done_ours,) = run_trainings(args, [ours], data)
        settings = replace(settings, jit_compile=done_ours.result.jit_choice["xla"])
        (done_keras,) = run_trainings(args, [replace(reference, settings=settings)], data)
    else:
        done_ours, done_keras = run_trainings(args, [ours, reference], data)
    results = {"ours": done_ours.result, "keras": done_keras.result}

    folder = study_dir(args, "keras_check")
    rows, gaps = [], {}
    for epoch in range(settings.epochs):
        row = {"epoch": epoch + 1}
        for label, result in results.items():
            for key in results_folder.HISTORY_KEYS:
                row[f"{label}_{key}"] = result.history[key][epoch]
        rows.append(row)
    for key in results_folder.HISTORY_KEYS:
        gaps[key] = max(abs(row[f"ours_{key}"] - row[f"keras_{key}"]) for row in rows)
    write_rows(folder / "keras_check.csv", rows)
    visualizations.plot_side_by_side(
        {"ours (lenet_fc_bn2)": results["ours"].history, "keras.layers.BatchNormalization": results["keras"].history},
        folder / "keras_check.png",
        "hand-written BN against Keras's layer, same initial weights and batches",
    )
    summary = {
        "bn_statistics": settings.bn_statistics,
        "largest_gap_over_epochs": gaps,
        "test_accuracy": {label: result.test_accuracy for label, result in results.items()},
        "keras_momentum": momentum_matching_window(settings.window_size),
        "epochs": settings.epochs,
        "seed": settings.seed,
    }
    write_summary(folder, summary)
    print("largest gap between the two networks over the epochs:")
    for key, gap in gaps.items():
        print(f"  {key:<14}{gap:.4f}")
    return summary
