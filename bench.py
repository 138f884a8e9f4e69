"""Speed figures for choosing settings, on synthetic MNIST-shaped data.

    python bench.py                        # which compile path, what BN costs a step: about a minute
    python bench.py --part steps           # steps per call into TensorFlow at batch 2, 16 and 64: minutes
    python bench.py --part all --output bench.json
    python bench.py --part sweep --data DATA  # the default sweep's first and later runs: many minutes

paths (the default): training steps per second of lenet, lenet_fc_bn2 (our
BN) and lenet_keras_bn (Keras's) on both compile paths at --batch_size, and
from them the faster path for each model and what BN in all four places costs a step against lenet. steps:
the same at batch 2, 16 and 64, at 1 and 32 training steps per call into
TensorFlow (what main.py uses where no probe looks at every step). sweep
(not in all): `python main.py --data DATA`, the default sweep, twice, each
in a process of its own, the first from an empty Keras folder (a machine's
first run) and the second after it.

Each figure is the median of --repeats epochs, timed in turns across the
models and paths after a warm-up epoch each, because a CPU machine (a shared
one above all) is noisy; compare figures within one run, not across runs.
Nothing is written unless --output names a file.
"""

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import utils
from common import files
from harness.flags import LIMITS, OneLineErrorParser, int_up_to

PARTS = ("paths", "steps", "all", "sweep")
MODELS = ("lenet", "lenet_fc_bn2", "lenet_keras_bn")
PATHS = {"xla": True, "tensorflow": False}
# The steps part: these batch sizes, at one step per call and at many, each
# epoch of STEPS_PART["steps"] steps (what training/speed.py's STEPS_PER_CALL is set from).
STEPS_PART = {"batch_sizes": (2, 16, 64), "counts": (1, 32), "steps": 640}


def build_parser():
    parser = OneLineErrorParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--part",
        choices=PARTS,
        default="paths",
        help="paths (the default, about a minute), steps, all (both), or sweep (needs --data)",
    )
    parser.add_argument(
        "--images",
        type=int_up_to(LIMITS["images"]),
        default=6_400,
        help="paths part: training images per timed epoch (100 steps at batch 64)",
    )
    parser.add_argument(
        "--batch_size", type=int_up_to(LIMITS["batch_size"]), default=64, help="paths part: the training batch size"
    )
    parser.add_argument(
        "--repeats",
        type=int_up_to(LIMITS["repeats"]),
        default=3,
        help="timed epochs per figure, after a warm-up one; the figure is their median",
    )
    parser.add_argument("--data", help="sweep part: the data main.py trains on (as its --data)")
    parser.add_argument("--output", help="a JSON file to write the figures to (none by default)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    output = Path(args.output) if args.output else None
    if output is not None:  # refused before anything is measured
        if output.is_dir() or not output.suffix:
            parser.error(f"--output {output}: name a file such as bench.json, not a folder")
        try:
            files.make_writable_folder(output.parent, f"--output {output}: its folder")
        except utils.UsageError as error:
            parser.error(str(error))
    if args.part == "sweep" and not args.data:
        parser.error("--part sweep needs --data PATH: the data the default sweep trains on")
    utils.import_tensorflow_quietly()  # after parsing: --help and a refused flag answer at once
    record = {"settings": {key: value for key, value in vars(args).items() if key != "output"}, "machine": machine()}
    if args.part in ("paths", "all"):
        record["paths"] = report_paths(measure_paths(args.batch_size, args.images, args.repeats), args.batch_size)
    if args.part in ("steps", "all"):
        record["steps_per_call"] = report_steps(measure_steps(args.repeats))
    if args.part == "sweep":
        record["settings"]["data"] = Path(args.data).name  # no folder of this machine in a results file
        record["sweep_seconds"] = measure_sweeps(args.data)
    if output is None:
        return 0
    try:
        files.write_text(output, json.dumps(record, indent=2) + "\n")
    except files.WriteError as error:
        print(f"bench.py: error: {error}", file=sys.stderr)
        return 1
    print(f"written to {output}")
    return 0


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine():
    import keras
    import tensorflow as tf

    from training.devices import cores

    return {
        "cpu": cpu_model(),
        "cores": cores(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def epoch_timer(name, jit_compile, batch_size, images, steps_per_call=None):
    """A compiled model of its own and a function that trains it one epoch
    over `images` synthetic images, returning the seconds it took; already
    run once (tracing and compiling are not timed)."""
    import numpy as np

    import models_handling
    from lenet import INPUT_SHAPE
    from main import DEFAULTS, Config

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(images, *INPUT_SHAPE)).astype(np.float32)
    y = rng.integers(0, 10, images)
    config = Config.of(DEFAULTS, batch_size=batch_size, epochs=1, verbose=0, jit_compile=jit_compile)
    model = models_handling.build_and_compile(name, config)

    def epoch():
        start = time.perf_counter()
        models_handling.fit(model, x, y, config, epochs=1, steps_per_call=steps_per_call)
        return time.perf_counter() - start

    epoch()
    return epoch


def in_turns(timers, repeats):
    """{key: median seconds} of each timer, the repetitions taken in turns so
    that a slow spell of the machine hits every configuration alike."""
    times = {key: [] for key in timers}
    for _ in range(repeats):
        for key, timer in timers.items():
            times[key].append(timer())
    return {key: statistics.median(values) for key, values in times.items()}


def measure_paths(batch_size, images, repeats):
    """{path: {model: training steps per second}} at `batch_size`."""
    print(f"training steps per second, batch {batch_size}, epochs of {images} images, median of {repeats}", flush=True)
    timers = {
        (path, name): epoch_timer(name, jit_compile, batch_size, images)
        for path, jit_compile in PATHS.items()
        for name in MODELS
    }
    steps = -(-images // batch_size)
    rates = {}
    for (path, name), seconds in in_turns(timers, repeats).items():
        rates.setdefault(path, {})[name] = steps / seconds
    return rates


def report_paths(rates, batch_size):
    """Print and return the faster path per model and BN's cost per step."""
    print(f"\n{'model':<16}" + "".join(f"{path + ' steps/s':>20}" for path in PATHS) + f"{'faster path':>14}")
    faster = {}
    for name in MODELS:
        faster[name] = max(PATHS, key=lambda path: rates[path][name])
        print(f"{name:<16}" + "".join(f"{rates[path][name]:>20.0f}" for path in PATHS) + f"{faster[name]:>14}")
    # A step of lenet_fc_bn2 against a step of lenet: what BN in four places costs.
    bn_cost = {path: rates[path]["lenet"] / rates[path]["lenet_fc_bn2"] for path in PATHS}
    keras_against_ours = {path: rates[path]["lenet_fc_bn2"] / rates[path]["lenet_keras_bn"] for path in PATHS}
    for path in PATHS:
        print(
            f"{path}: a lenet_fc_bn2 step takes {bn_cost[path]:.2f}x a lenet step; ours is "
            f"{keras_against_ours[path]:.2f}x as fast as Keras's BN"
        )
    choice = "XLA (--jit_compile 1)" if all(path == "xla" for path in faster.values()) else None
    if all(path == "tensorflow" for path in faster.values()):
        choice = "TensorFlow's kernels (--jit_compile 0, what auto takes on a CPU)"
    print(f"at batch {batch_size}: " + (f"{choice} for every model" if choice else "the faster path differs by model"))
    return {
        "steps_per_second": rates,
        "faster_path": faster,
        "fc_bn2_step_over_lenet_step": bn_cost,
        "ours_over_keras_bn_speed": keras_against_ours,
    }


def measure_steps(repeats):
    """{path: {model: {batch: {steps per call: steps per second}}}}."""
    rates = {}
    for batch in STEPS_PART["batch_sizes"]:
        print(f"\nbatch {batch}: steps per second at 1 and 32 steps per call, median of {repeats}", flush=True)
        timers = {
            (path, name, count): epoch_timer(name, jit_compile, batch, STEPS_PART["steps"] * batch, count)
            for path, jit_compile in PATHS.items()
            for name in ("lenet", "lenet_fc_bn2")
            for count in STEPS_PART["counts"]
        }
        for (path, name, count), seconds in in_turns(timers, repeats).items():
            rates.setdefault(path, {}).setdefault(name, {}).setdefault(str(batch), {})[str(count)] = (
                STEPS_PART["steps"] / seconds
            )
    return rates


def report_steps(rates):
    """Print and return the gain of many steps per call over one."""
    most, gains = str(max(STEPS_PART["counts"])), {}
    for path, models in rates.items():
        for name, batches in models.items():
            for batch, counts in batches.items():
                gains[f"{path}, {name}, batch {batch}"] = counts[most] / counts["1"]
                print(
                    f"{path:<11}{name:<14}batch {batch:>3}: {counts['1']:>6.0f} steps/s at 1 per call, "
                    f"{counts[most]:>6.0f} at {most} ({gains[f'{path}, {name}, batch {batch}']:.2f}x)"
                )
    return {"steps_per_second": rates, "gain": gains, **STEPS_PART}


def measure_sweeps(data):
    """Seconds of the default sweep on `data`: a machine's first run (an
    empty Keras folder), and the run after it."""
    import os
    import subprocess
    import tempfile

    seconds = {}
    with tempfile.TemporaryDirectory() as keras_home:
        for label in ("first run", "second run"):
            with tempfile.TemporaryDirectory() as results:
                command = [sys.executable, str(Path(__file__).with_name("main.py")), "--data", str(data)]
                command += ["--verbose", "0", "--flag_visualizations", "0", "--results_dir", results]
                start = time.perf_counter()
                done = subprocess.run(
                    command, env={**os.environ, "KERAS_HOME": keras_home}, capture_output=True, text=True
                )
                if done.returncode:  # main.py's own one-line error, passed on
                    print(
                        f"bench.py: the sweep failed: {(done.stderr.strip().splitlines() or ['no message'])[-1]}",
                        file=sys.stderr,
                    )
                    raise SystemExit(done.returncode)
                seconds[label] = time.perf_counter() - start
                print(f"  the default sweep, {label}: {seconds[label]:.1f} s", flush=True)
    print(f"the first run against the second: {seconds['first run'] / seconds['second run']:.3f}x")
    return seconds


if __name__ == "__main__":
    sys.exit(main())
