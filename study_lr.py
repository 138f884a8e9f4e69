"""lr: lenet and lenet_fc_bn2 with plain SGD at several learning rates."""

import keras

import models_handling
import trainings
import visualizations
from command_line import LIMITS, float_up_to
from main import DEFAULTS
from study_common import (
    accuracy_of,
    base_settings,
    load_raw,
    run_trainings,
    study_dir,
    with_precise_statistics,
    write_rows,
    write_summary,
)

ABOUT = "lenet and lenet_fc_bn2 with plain SGD at several learning rates, test accuracy under both statistics rules."


def add_arguments(parser):
    parser.add_argument("--rates", type=float_up_to(LIMITS["learning_rate"]), nargs="+",
                        default=[0.01, 0.1, 1.0, 10.0],
                        help="SGD learning rates; the default optimizer at its own rate is always added")


def run(args):
    """lenet and lenet_fc_bn2 with plain SGD at several learning rates, and with
    the default optimizer for reference, all for the same number of epochs."""
    data = load_raw(args)
    splits = data.splits(DEFAULTS["val_split"], args.seed)
    runs = [("sgd", rate) for rate in args.rates] + [(DEFAULTS["optimizer"], None)]
    # Training does not depend on the rule, so one run under `moving` gives
    # both: its own test accuracy, and the `precise` one after the refill
    # that rule would have made after the last epoch.
    plan = [trainings.Training(name, base_settings(args, optimizer=optimizer, learning_rate=rate,
                                                   bn_statistics="moving"), DEFAULTS["val_split"], args.seed,
                               label=f"{name}, {optimizer} at {rate if rate else 'its default rate'}")
            for name in ("lenet", "lenet_fc_bn2") for optimizer, rate in runs]
    rows = [None] * len(plan)

    def record(index, done):
        training, result = plan[index], done.result
        settings, has_norm = training.settings, training.name != "lenet"
        # A diverged run (run_model stops it at its first non-finite loss)
        # has no test figures.
        diverged = result.diverged is not None
        optimizer = models_handling.make_optimizer(settings.optimizer, settings.learning_rate)
        rate_used = float(f"{float(keras.ops.convert_to_numpy(optimizer.learning_rate)):.6g}")
        precise = result.test_accuracy if diverged or not has_norm else accuracy_of(
            with_precise_statistics(done.load_model(), splits.x_train, settings), splits.x_test, splits.y_test,
            1000)[0]
        rows[index] = {
            "model": training.name, "optimizer": settings.optimizer, "learning_rate": rate_used,
            "test_accuracy": precise, "test_accuracy_moving": result.test_accuracy,
            "test_loss_moving": result.test_loss, "diverged": diverged,
        }
        if diverged:
            print(f"  {training.name} {settings.optimizer} lr {rate_used:g}: diverged at epoch "
                  f"{result.diverged['epoch']}", flush=True)
        else:
            print(f"  {training.name} {settings.optimizer} lr {rate_used:g}: test accuracy {precise:.4f}"
                  + (f" (precise), {result.test_accuracy:.4f} (moving)" if has_norm else ""), flush=True)
        write_rows(study_dir(args, "lr") / "lr.csv", [row for row in rows if row])  # kept if interrupted

    run_trainings(args, plan, data, record)

    folder = study_dir(args, "lr")
    sgd_rows = [row for row in rows if row["optimizer"] == "sgd"]
    references = {
        f"{row['model']}, {row['optimizer']} at its default rate {row['learning_rate']:g}": row["test_accuracy"]
        for row in rows if row["optimizer"] != "sgd"
    }
    visualizations.plot_learning_rates(sgd_rows, references, folder / "lr.png")
    summary = {"epochs": args.epochs, "seed": args.seed, "runs": rows}
    write_summary(folder, summary)
    return summary
