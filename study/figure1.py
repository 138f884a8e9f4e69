"""figure1: the BN paper's Figure 1 on LeNet-5, the input of one F6 sigmoid
during training, without BN and with BN everywhere."""

import functools

import keras
import numpy as np

import utils
import visualizations
from harness import precise
from harness.executor import Training
from harness.flags import LIMITS, float_up_to, int_up_to
from study.common import accuracy_of, run_trainings, study_dir, write_rows, write_summary

ABOUT = "The BN paper's Figure 1: percentiles of one F6 sigmoid's input during training."
F6_UNITS = 84  # the sigmoids of LeNet-5's F6 layer, whose inputs figure1 follows


def add_arguments(parser, flag):
    parser.add_argument(
        "--every",
        type=int_up_to(LIMITS["steps"]),
        default=20,
        help=f"measure every this many training steps (1 to {LIMITS['steps']})",
    )
    parser.add_argument(
        "--unit",
        type=int_up_to(F6_UNITS - 1, low=0),
        default=0,
        help=f"which of F6's {F6_UNITS} units to follow (0 to {F6_UNITS - 1})",
    )
    parser.add_argument(
        "--probe_images",
        type=int_up_to(LIMITS["images"]),
        default=1000,
        help="how many (fixed) validation images the percentiles are taken over "
        f"(1 to {LIMITS['images']}; the whole validation split at most)",
    )
    parser.add_argument(
        "--target",
        type=float_up_to(1.0),
        default=0.9,
        help="report the first step at which test accuracy reaches this (up to 1)",
    )
    flag(parser, "bn_statistics")


class SigmoidInputProbe(keras.callbacks.Callback):
    """Every `every` training steps (and before the first and after the last), the 15th, 50th and
    85th percentiles of what one F6 sigmoid receives on fixed images, and the
    test accuracy. Measured in inference mode, as the network would predict;
    under the `precise` rule with BN statistics refilled from the weights of
    that step, so that each point describes the network as it then is."""

    def __init__(self, probe_images, test_images, test_labels, unit, every, train_images, config):
        super().__init__()
        self.probe_images, self.test_images, self.test_labels = probe_images, test_images, test_labels
        self.unit, self.every = unit, every
        self.train_images, self.config = train_images, config
        self.step = 0
        self.curve = {key: [] for key in ("step", "test_accuracy", "p15", "p50", "p85")}

    def measure(self):
        # The step numbers the refill's draw, so each measurement has its own
        # batches; the statistics the run goes on with are left as they were.
        with precise.as_the_rule_predicts(self.model, self.train_images, self.config, self.step) as model:
            received = model.layer_outputs(self.probe_images, training=False)["F6"][:, self.unit]
            accuracy = accuracy_of(model, self.test_images, self.test_labels, 1000)[0]
        percentiles = np.percentile(np.asarray(received), [15, 50, 85])
        for key, value in zip(("p15", "p50", "p85"), percentiles):
            self.curve[key].append(float(value))
        self.curve["step"].append(self.step)
        self.curve["test_accuracy"].append(accuracy)

    def on_train_begin(self, logs=None):
        self.measure()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            self.measure()

    def on_train_end(self, logs=None):
        if self.curve["step"][-1] != self.step:  # end on the trained network
            self.measure()

    def report(self):
        """What comes back from where it trained (executor.Finished.report)."""
        return self.curve


def make_probe(splits, config, probe_count, unit, every):
    """A SigmoidInputProbe on a training's own splits (made where it trains)."""
    return SigmoidInputProbe(
        splits.x_val[:probe_count], splits.x_test, splits.y_test, unit, every, splits.x_train, config
    )


def run(config, args):
    """The BN paper's Figure 1 on LeNet-5, without BN and with BN everywhere."""
    data = utils.load(config)
    probe = functools.partial(make_probe, probe_count=args.probe_images, unit=args.unit, every=args.every)
    plan = [Training(name, config, callback=probe) for name in ("lenet", "lenet_fc_bn2")]
    curves, rows, test_accuracy = {}, [], {}
    for training, done in zip(plan, run_trainings(config, plan, data), strict=True):
        name, curve = training.name, done.report
        curves[name], test_accuracy[name] = curve, done.result.test_accuracy
        rows += [{"model": name, **dict(zip(curve, values))} for values in zip(*curve.values())]
    probe_images = min(
        args.probe_images, len(utils.split_train_val(len(data.y_train), config.val_split, config.seed)[1])
    )

    folder = study_dir(config, "figure1")
    write_rows(folder / "figure1.csv", rows)
    visualizations.plot_figure1(curves, folder / "figure1.png")
    summary = {
        "unit": args.unit,
        "probe_images": probe_images,
        "every": args.every,
        "epochs": config.epochs,
        "seed": config.seed,
        "bn_statistics": config.bn_statistics,
        "test_accuracy": test_accuracy,
        "final": {name: {key: values[-1] for key, values in curve.items()} for name, curve in curves.items()},
        "spread_p85_minus_p15": {
            name: {"first": curve["p85"][0] - curve["p15"][0], "last": curve["p85"][-1] - curve["p15"][-1]}
            for name, curve in curves.items()
        },
    }
    for name, curve in curves.items():
        steps = np.asarray(curve["step"])
        reached = [int(s) for s, a in zip(steps, curve["test_accuracy"]) if a >= args.target]
        summary.setdefault("first_step_at_target", {})[name] = reached[0] if reached else None
        print(
            f"{name}: median F6 input {curve['p50'][0]:+.2f} -> {curve['p50'][-1]:+.2f}, "
            f"test accuracy {curve['test_accuracy'][-1]:.4f} at step {curve['step'][-1]}, "
            f"first at {args.target}: step {summary['first_step_at_target'][name]}"
        )
    summary["target"] = args.target
    write_summary(folder, summary)
    return summary
