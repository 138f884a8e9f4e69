"""replicas: one global batch split over several devices, BN synchronized
across them or not."""

import contextlib
from dataclasses import replace

import utils
import visualizations
from common.config import BN_SYNC
from study.common import run_trainings, study_dir, write_rows, write_summary

ABOUT = (
    "lenet_fc_bn2 with the global batch of 64 split over 1, 2, 4, 8 replicas, BN statistics synchronized "
    "(global) or per replica."
)


def add_arguments(parser, flag):
    flag(
        parser,
        "devices",
        "--replicas",
        nargs="+",
        default=[1, 2, 4, 8],
        help="replica counts to split the global batch of 64 over (each must divide 64)",
    )


def run(config, args):
    """lenet_fc_bn2 with its global batch split over 1, 2, 4, 8 replicas
    (logical CPU devices here; GPUs work the same), BN synchronized across
    them (global) or not (replica), all else equal."""
    from harness.executor import Training
    from training import devices

    batch = config.batch_size
    uneven = [count for count in args.replicas if batch % count]
    if uneven:
        raise utils.UsageError(
            f"--replicas {' '.join(map(str, uneven))}: the global batch of "
            f"{batch} does not split evenly over that many; use divisors of it"
        )
    cpus = devices.logical_cpus(max(args.replicas))  # before anything runs on TensorFlow
    data = utils.load(config)
    folder, rows, points = study_dir(config, "replicas"), [], {rule: [] for rule in BN_SYNC}
    for count in args.replicas:
        # One replica: both rules are the same computation, trained once.
        for rule in BN_SYNC if count > 1 else ("global",):
            # XLA off throughout, as several devices need, so that only the
            # split differs between the runs; in this process, whose devices they are.
            settings = replace(config, devices=count, bn_sync=rule, jit_compile=False, jobs=1, cluster=None)
            training = Training(
                "lenet_fc_bn2", settings, label=f"{count} replica(s) of {batch // count} images, --bn_sync {rule}"
            )
            with devices.mirrored_cpus(cpus[:count]).scope() if count > 1 else contextlib.nullcontext():
                (result,) = run_trainings(settings, [training], data)
            for row_rule in BN_SYNC if count == 1 else (rule,):
                rows.append(
                    {
                        "replicas": count,
                        "batch_per_replica": batch // count,
                        "bn_sync": row_rule,
                        "test_accuracy": result.test_accuracy,
                        "final_val_accuracy": result.history["val_accuracy"][-1],
                        "train_seconds": round(result.train_seconds, 1),
                    }
                )
                points[row_rule].append((count, result.test_accuracy))
            write_rows(folder / "replicas.csv", rows)  # kept if the study is interrupted
    visualizations.plot_replicas(points, batch, folder / "replicas.png")
    summary = {"epochs": config.epochs, "seed": config.seed, "global_batch": batch, "runs": rows}
    write_summary(folder, summary)
    return summary
