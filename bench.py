"""Speed benchmark: how fast lenet, lenet_fc_bn2 (hand-written BN) and
lenet_keras_bn (Keras's BN) train and predict, on synthetic MNIST-shaped data.

    python bench.py                           # 60,000 images, batch 64, 5 repetitions
    python bench.py --images 6400 --repeats 2 # a quick look (written nowhere without --output)
    python bench.py --jit_compile 0           # without XLA, as main.py --jit_compile 0

Each figure is the median of --repeats repetitions, taken in turns across the
three models after a warm-up epoch, and the ratios are taken within this one
run, because CPU machines (shared ones above all) are noisy. Prints a table and
writes the figures to --output; at the default --images and --repeats, to
results/bench.json unless --output says otherwise.
"""

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import utils

utils.import_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import models_handling  # noqa: E402
from lenet import INPUT_SHAPE, KERAS_BN_VARIANT, VARIANTS  # noqa: E402
from command_line import LIMITS, OneLineErrorParser, int_up_to  # noqa: E402
from main import DEFAULTS  # noqa: E402

MODELS = ("lenet", "lenet_fc_bn2", KERAS_BN_VARIANT)
# The default sweep (python main.py --model all) on the full MNIST.
SWEEP = {"train": 51_000, "val": 9_000, "test": 10_000, "epochs": DEFAULTS["epochs"]}
FULL_RUN = {"images": 60_000, "repeats": 5}  # what results/bench.json holds
# Below this many images an epoch is over before the timing means much (start-up
# and the first batches dominate), so the sweep estimate is not to be trusted.
FEWEST_TRUSTED_IMAGES = 6_400


def synthetic_mnist(num_images, seed=0):
    """Random images shaped like padded MNIST (32x32x1, float32) and labels 0..9."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(num_images, *INPUT_SHAPE)).astype(np.float32)
    return images, rng.integers(0, 10, num_images)


def seconds(action):
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(batch_size, num_images, repeats, jit_compile):
    """Median images per second, training (full epochs) and inference (evaluate),
    per model; and the median seconds of one `precise` statistics refill (the
    window_size batches that pass through the network at each epoch's end)."""
    settings = models_handling.Settings.from_mapping(
        {**DEFAULTS, "batch_size": batch_size, "epochs": 1, "verbose": 0, "jit_compile": jit_compile})
    train_images, train_labels = synthetic_mnist(num_images, seed=0)
    test_images, test_labels = synthetic_mnist(min(num_images, SWEEP["test"]), seed=1)
    models = {name: models_handling.build_and_compile(name, settings) for name in MODELS}

    def train_epoch(model):
        return seconds(lambda: models_handling.fit(model, train_images, train_labels, settings, epochs=1))

    def inference(model):
        return seconds(lambda: models_handling.evaluate(model, test_images, test_labels, settings))

    def refill(model, repeat):
        return seconds(lambda: models_handling.refill(model, train_images, settings, repeat))

    for model in models.values():  # warm-up: tracing, first allocations
        train_epoch(model)
        inference(model)
        if model.norm:
            refill(model, 0)
    train_times = {name: [] for name in MODELS}
    inference_times = {name: [] for name in MODELS}
    refill_times = {name: [] for name, model in models.items() if model.norm}  # lenet has nothing to refill
    for repeat in range(repeats):
        for name, model in models.items():  # in turns, so that a slow spell hits every model
            train_times[name].append(train_epoch(model))
            inference_times[name].append(inference(model))
            line = f"  repetition {repeat + 1}/{repeats} {name}: train {train_times[name][-1]:.1f} s, " \
                   f"inference {inference_times[name][-1]:.2f} s"
            if name in refill_times:
                refill_times[name].append(refill(model, repeat + 1))
                line += f", refill {refill_times[name][-1]:.3f} s"
            print(line, flush=True)
    return (
        {name: num_images / statistics.median(times) for name, times in train_times.items()},
        {name: len(test_images) / statistics.median(times) for name, times in inference_times.items()},
        {name: statistics.median(times) for name, times in refill_times.items()},
    )


def sweep_seconds(train_speed, inference_speed, refill_seconds):
    """Estimated time of `main.py --model all` at the defaults on the full MNIST: each
    epoch trains on 51,000 images, refills BN's statistics and validates on 9,000,
    then the test set. The four BN variants are costed as lenet_fc_bn2, the one
    with the most BN layers."""
    total = 0.0
    for name in VARIANTS:
        measured = "lenet" if name == "lenet" else "lenet_fc_bn2"
        total += SWEEP["epochs"] * SWEEP["train"] / train_speed[measured]
        total += (SWEEP["epochs"] * SWEEP["val"] + SWEEP["test"]) / inference_speed[measured]
        total += SWEEP["epochs"] * refill_seconds.get(measured, 0.0)
    return total


def main(argv=None):
    parser = OneLineErrorParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int_up_to(LIMITS["images"]), default=FULL_RUN["images"],
                        help=f"training images per epoch (1 to {LIMITS['images']})")
    parser.add_argument("--batch_size", type=int_up_to(LIMITS["batch_size"]), default=DEFAULTS["batch_size"],
                        help=f"1 to {LIMITS['batch_size']}")
    parser.add_argument("--repeats", type=int_up_to(LIMITS["repeats"]), default=FULL_RUN["repeats"],
                        help=f"timed repetitions per figure (1 to {LIMITS['repeats']})")
    parser.add_argument("--jit_compile", type=int, choices=[0, 1], default=DEFAULTS["jit_compile"],
                        help="1: XLA-compiled steps, as main.py runs by default; 0: TensorFlow's own kernels")
    parser.add_argument("--output", help="a JSON file for the figures; by default results/bench.json for a "
                        "full run (the default --images and --repeats) and no file for a shorter one")
    args = parser.parse_args(argv)
    if args.output is None and (args.images, args.repeats) == (FULL_RUN["images"], FULL_RUN["repeats"]):
        args.output = "results/bench.json"
    if args.output is not None:
        output = Path(args.output)
        if output.is_dir() or not output.suffix:
            parser.error(f"--output {output}: name a file such as bench.json, not a folder")
        try:
            utils.make_writable_folder(output.parent, f"--output {output}: its folder")
        except utils.UsageError as error:
            parser.error(str(error))
    if args.images < FEWEST_TRUSTED_IMAGES:
        print(f"warning: {args.images} images make epochs too short to time well; the figures and the sweep "
              f"estimate below are rough (use --images {FEWEST_TRUSTED_IMAGES} or more)", file=sys.stderr)

    print(
        f"{args.images} synthetic images, batch {args.batch_size}, {args.repeats} repetitions, "
        f"jit_compile {args.jit_compile}"
    )
    train_speed, inference_speed, refill_seconds = measure(
        args.batch_size, args.images, args.repeats, bool(args.jit_compile))
    ratios = {
        "fc_bn2_train_vs_keras_bn_train": train_speed["lenet_fc_bn2"] / train_speed[KERAS_BN_VARIANT],
        "fc_bn2_train_vs_lenet_train": train_speed["lenet_fc_bn2"] / train_speed["lenet"],
        "fc_bn2_inference_vs_lenet_inference": inference_speed["lenet_fc_bn2"] / inference_speed["lenet"],
    }
    sweep = sweep_seconds(train_speed, inference_speed, refill_seconds)
    # What the `precise` rule adds to a full-data epoch (51,000 training images).
    refill_share = {
        name: refill / (SWEEP["train"] / train_speed[name]) for name, refill in refill_seconds.items()
    }

    print(f"\n{'model':<16}{'train img/s':>13}{'inference img/s':>17}")
    for name in MODELS:
        print(f"{name:<16}{train_speed[name]:>13.0f}{inference_speed[name]:>17.0f}")
    print()
    for name, value in ratios.items():
        print(f"{name:<38}{value:>6.2f}x")
    for name, refill in refill_seconds.items():
        print(f"{'refill, ' + name:<38}{refill * 1000:>6.0f} ms, {refill_share[name]:.2%} of a "
              f"{SWEEP['train']:,}-image training epoch")
    print(f"{'estimated default sweep (--model all)':<38}{sweep / 60:>6.1f} min")

    record = {
        "settings": vars(args),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "train_images_per_second": train_speed,
        "inference_images_per_second": inference_speed,
        "ratios": ratios,
        "refill_seconds": refill_seconds,
        "refill_share_of_a_full_training_epoch": refill_share,
        "estimated_default_sweep_seconds": sweep,
    }
    if args.output is None:
        print("not written to a file (a shorter run than results/bench.json's; --output FILE keeps it)")
        return 0
    utils.write_text(args.output, json.dumps(record, indent=2) + "\n")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
