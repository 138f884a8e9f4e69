"""lr: lenet and lenet_fc_bn2 with plain SGD at several learning rates."""

import utils
import visualizations
from study.common import accuracy_of, study_dir, write_summary
from study.grid import Line, add_resume, plan, train

ABOUT = "lenet and lenet_fc_bn2 with plain SGD at several learning rates, test accuracy under both statistics rules."


def add_arguments(parser, flag):
    flag(
        parser,
        "learning_rate",
        "--rates",
        nargs="+",
        default=[0.01, 0.1, 1.0, 10.0],
        help="SGD learning rates; the default optimizer at its own rate is always added",
    )
    add_resume(parser, flag)


def run(config, args):
    """lenet and lenet_fc_bn2 with plain SGD at several learning rates, and with
    the default optimizer for reference, all for the same number of epochs:
    a grid over (optimizer, rate) points with one seed."""
    import keras

    import models_handling
    from training.precise import with_precise_statistics

    data = utils.load(config)
    splits = data.splits(config.val_split, config.seed)
    # Training does not depend on the rule, so one run under `moving` gives
    # both: its own test accuracy, and the `precise` one after the refill
    # that rule would have made after the last epoch.
    lines = [Line(name, {"bn_statistics": "moving"}) for name in ("lenet", "lenet_fc_bn2")]
    points = [{"optimizer": "sgd", "learning_rate": rate} for rate in dict.fromkeys(args.rates)]
    points.append({"optimizer": config.optimizer, "learning_rate": None})
    labels = [line.describe() for line in lines]
    trainings = sorted(plan(config, lines, points, [config.seed]), key=lambda training: labels.index(training.line))
    folder = study_dir(config, "lr")

    def row_of(training, result):
        config, has_norm = training.config, training.name != "lenet"
        # A diverged run (run_model stops it at its first non-finite loss)
        # has no test figures.
        diverged = result.diverged is not None
        optimizer = models_handling.make_optimizer(config.optimizer, config.learning_rate)
        rate_used = float(f"{float(keras.ops.convert_to_numpy(optimizer.learning_rate)):.6g}")
        precise = (
            result.test_accuracy
            if diverged or not has_norm
            else accuracy_of(
                with_precise_statistics(result.load_model(), splits.x_train, config), splits.x_test, splits.y_test, 1000
            )[0]
        )
        if has_norm and not diverged:  # the line above it gave the moving statistics' figures
            print(f"  {training.describe()}: with precise statistics, test accuracy {precise:.4f}", flush=True)
        return {
            "model": training.name,
            "optimizer": config.optimizer,
            "learning_rate": rate_used,
            "test_accuracy": precise,
            "test_accuracy_moving": result.test_accuracy,
            "test_loss_moving": result.test_loss,
            "diverged": diverged,
        }

    rows, _ = train(config, trainings, data, folder / "lr.csv", row_of, config.resume)
    sgd_rows = [row for row in rows if row["optimizer"] == "sgd"]
    references = {
        f"{row['model']}, {row['optimizer']} at its default rate {row['learning_rate']:g}": row["test_accuracy"]
        for row in rows
        if row["optimizer"] != "sgd"
    }
    visualizations.plot_learning_rates(sgd_rows, references, folder / "lr.png")
    summary = {"epochs": config.epochs, "seed": config.seed, "runs": rows}
    write_summary(folder, summary)
    return summary
