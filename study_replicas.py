"""replicas: one global batch split over several devices, BN synchronized
across them or not."""

import contextlib

import distribution
import models_handling
import utils
import visualizations
from command_line import LIMITS, int_up_to
from main import DEFAULTS
from study_common import base_settings, load_splits, study_dir, train_and_report, write_rows, write_summary

ABOUT = ("lenet_fc_bn2 with the global batch of 64 split over 1, 2, 4, 8 replicas, BN statistics synchronized "
         "(global) or per replica.")


def add_arguments(parser):
    parser.add_argument("--replicas", type=int_up_to(LIMITS["devices"]), nargs="+", default=[1, 2, 4, 8],
                        help="replica counts to split the global batch of 64 over (each must divide 64)")


def run(args):
    """lenet_fc_bn2 with its global batch split over 1, 2, 4, 8 replicas
    (logical CPU devices here; GPUs work the same), BN synchronized across
    them (global) or not (replica), all else equal."""
    uneven = [count for count in args.replicas if DEFAULTS["batch_size"] % count]
    if uneven:
        raise utils.UsageError(f"--replicas {' '.join(map(str, uneven))}: the global batch of "
                               f"{DEFAULTS['batch_size']} does not split evenly over that many; use divisors of it")
    cpus = distribution.logical_cpus(max(args.replicas))  # before anything runs on TensorFlow
    splits = load_splits(args, args.seed)
    folder, rows, points = study_dir(args, "replicas"), [], {rule: [] for rule in models_handling.BN_SYNC}
    for count in args.replicas:
        # One replica: both rules are the same computation, trained once.
        for rule in models_handling.BN_SYNC if count > 1 else ("global",):
            # XLA off throughout, as several devices need, so that only the
            # split differs between the runs.
            settings = base_settings(args, devices=count, bn_sync=rule, jit_compile=False)
            with distribution.mirrored_cpus(cpus[:count]).scope() if count > 1 else contextlib.nullcontext():
                print(f"  {count} replica(s) of {DEFAULTS['batch_size'] // count} images, --bn_sync {rule}:",
                      flush=True)
                result = train_and_report("lenet_fc_bn2", splits, settings)
            for row_rule in models_handling.BN_SYNC if count == 1 else (rule,):
                rows.append({"replicas": count, "batch_per_replica": DEFAULTS["batch_size"] // count,
                             "bn_sync": row_rule, "test_accuracy": result.test_accuracy,
                             "final_val_accuracy": result.history["val_accuracy"][-1],
                             "train_seconds": round(result.train_seconds, 1)})
                points[row_rule].append((count, result.test_accuracy))
            write_rows(folder / "replicas.csv", rows)  # kept if the study is interrupted
    visualizations.plot_replicas(points, DEFAULTS["batch_size"], folder / "replicas.png")
    summary = {"epochs": args.epochs, "seed": args.seed, "global_batch": DEFAULTS["batch_size"], "runs": rows}
    write_summary(folder, summary)
    return summary
