"""Speed benchmark: how fast lenet, lenet_fc_bn2 (hand-written BN) and
lenet_keras_bn (Keras's BN) train and predict, on synthetic MNIST-shaped data,
on both compile paths (XLA and TensorFlow's own kernels) and as
`--jit_compile measure` chooses between them.

    python bench.py                           # 60,000 images, batch 64, 5 repetitions
    python bench.py --images 6400 --repeats 2 # a quick look (written nowhere without --output)

Each figure is the median of --repeats repetitions, taken in turns across the
three models and both paths after a warm-up epoch, and the ratios are taken
within this one run, because CPU machines (shared ones above all) are noisy.
Inference is timed at the training batch size and at main.py's
inference_batch_size. `auto` is what jit_choice chooses for each model on a
fresh copy of it, at the cost it reports; its figures are the chosen path's.
Prints a table and writes the figures to --output; at the default --images and
--repeats, to results/bench.json unless --output says otherwise.
"""

import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import utils

utils.import_tensorflow_quietly()

import keras
import numpy as np
import tensorflow as tf

import models_handling
from harness import files, precise
from harness.compile_path import PATH_KEYS, STEPS, choose_jit_compile, cpu_model
from harness.config import KERAS_BN_VARIANT, VARIANTS, Config
from harness.devices import cores
from harness.executor import Executor, Training, jobs_for
from harness.flags import LIMITS, OneLineErrorParser, int_up_to
from lenet import INPUT_SHAPE
from main import DEFAULTS

MODELS = ("lenet", "lenet_fc_bn2", KERAS_BN_VARIANT)
PATHS = {key: jit_compile for jit_compile, key in PATH_KEYS.items()}  # "xla": True, "tensorflow": False
# The default sweep (python main.py --model all) on the full MNIST.
SWEEP = {"train": 51_000, "val": 9_000, "test": 10_000, "epochs": DEFAULTS["epochs"]}
FULL_RUN = {"images": 60_000, "repeats": 5}  # what results/bench.json holds
PARTS = ("all", "paths", "jobs", "steps", "bn", "data", "curve", "against")
# The bn part: the inputs of lenet_fc_bn2's four BN layers at batch 64, each
# layer's forward and backward pass timed CALLS times per repetition.
BN_PART = {"shapes": {"C1": (64, 28, 28, 6), "C3": (64, 10, 10, 16), "C5": (64, 120), "F6": (64, 84)}, "calls": 100}
# The data part: a Keras-format .npz of the full MNIST's shapes (random pixels), read DATA_READS times each way.
DATA_READS = 5
# The jobs part: the default sweep's five models, each on these images for these epochs.
JOBS_SWEEP = {"images": 12_800, "epochs": 3}
# The steps part: training steps per second at these batch sizes, at one step
# per call into TensorFlow and at several, each epoch this many steps.
STEPS_PART = {"batch_sizes": (2, 16, 64), "counts": (1, 4, 32), "steps": 640, "repeats": 5}
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


def bench_config(batch_size, inference_batch_size, jit_compile):
    return Config.of(
        DEFAULTS,
        batch_size=batch_size,
        inference_batch_size=inference_batch_size,
        epochs=1,
        verbose=0,
        jit_compile=jit_compile,
    )


def measure(batch_size, inference_batch_size, num_images, repeats):
    """Per path and model, medians: training images per second (full epochs),
    inference images per second (evaluate) at `inference_batch_size` and at
    `batch_size`, and the seconds of one `precise` statistics refill (the
    window_size batches that pass through the network at each epoch's end).
    Each is {path: {model: figure}}."""
    train_images, train_labels = synthetic_mnist(num_images, seed=0)
    test_images, test_labels = synthetic_mnist(min(num_images, SWEEP["test"]), seed=1)
    runs = {}  # (path, model name): (model, settings)
    for path, jit_compile in PATHS.items():
        settings = bench_config(batch_size, inference_batch_size, jit_compile)
        for name in MODELS:
            runs[path, name] = models_handling.build_and_compile(name, settings), settings

    def timings(model, settings, repeat):
        """One repetition's seconds: a training epoch, inference at both batch sizes, a refill."""
        small_batches = replace(settings, inference_batch_size=batch_size)
        return {
            "train": seconds(lambda: models_handling.fit(model, train_images, train_labels, settings, epochs=1)),
            "inference": seconds(lambda: models_handling.evaluate(model, test_images, test_labels, settings)),
            "inference_at_training_batch": seconds(
                lambda: models_handling.evaluate(model, test_images, test_labels, small_batches)
            ),
            "refill": seconds(lambda: precise.refill(model, train_images, settings, repeat))
            if model.norm
            else None,  # lenet has nothing to refill
        }

    for model, settings in runs.values():  # warm-up: tracing, compiling, first allocations
        timings(model, settings, 0)
    times = {key: [] for key in runs}
    for repeat in range(repeats):
        for (path, name), (model, settings) in runs.items():  # in turns: a slow spell hits every model
            times[path, name].append(timings(model, settings, repeat + 1))
            latest = times[path, name][-1]
            line = (
                f"  repetition {repeat + 1}/{repeats} {path:<10} {name}: train {latest['train']:.1f} s, "
                f"inference {latest['inference']:.2f} s (batch {inference_batch_size}), "
                f"{latest['inference_at_training_batch']:.2f} s (batch {batch_size})"
            )
            if latest["refill"] is not None:
                line += f", refill {latest['refill']:.3f} s"
            print(line, flush=True)

    def median(kind, path, name):
        return statistics.median(repetition[kind] for repetition in times[path, name])

    count = {"train": num_images, "inference": len(test_images), "inference_at_training_batch": len(test_images)}
    figures = {
        kind: {path: {name: count[kind] / median(kind, path, name) for name in MODELS} for path in PATHS}
        for kind in count
    }
    figures["refill"] = {
        path: {name: median("refill", path, name) for name in MODELS if name != "lenet"} for path in PATHS
    }
    return figures


def measure_choices(batch_size, num_images):
    """What `--jit_compile measure` chooses for each model, each on a fresh copy
    timed as main.py times it: {model: JitChoice}. Choosing reads at most
    STEPS batches, so only those images are made."""
    train_images, train_labels = synthetic_mnist(min(num_images, STEPS * batch_size), seed=0)
    settings = bench_config(batch_size, DEFAULTS["inference_batch_size"], "auto")
    choices = {}
    for name in MODELS:
        model = models_handling.build_and_compile(name, settings)
        choices[name] = choose_jit_compile(
            model, models_handling.timing_batches(train_images, train_labels, batch_size)
        )
        print(f"  auto, {name}: {choices[name].describe()}", flush=True)
    return choices


def with_auto(figures, choices):
    """`figures` with an "auto" path: each model's figures on the path chosen for it."""
    chosen = {name: PATH_KEYS[choice.jit_compile] for name, choice in choices.items()}
    return {
        kind: {**per_path, "auto": {name: per_path[chosen[name]][name] for name in per_path["xla"]}}
        for kind, per_path in figures.items()
    }


def sweep_seconds(train_speed, inference_speed, refill_seconds, startup_seconds):
    """Estimated time of `main.py --model all` at the defaults on the full MNIST
    on one path (each argument {model: figure}): each model starts (its first
    step compiles; under auto it chooses, both compiles included), then each
    epoch trains on 51,000 images, refills BN's statistics and validates on
    9,000, then the test set. The four BN variants are costed as lenet_fc_bn2,
    the one with the most BN layers."""
    total = 0.0
    for name in VARIANTS:
        measured = "lenet" if name == "lenet" else "lenet_fc_bn2"
        total += startup_seconds[measured]
        total += SWEEP["epochs"] * SWEEP["train"] / train_speed[measured]
        total += (SWEEP["epochs"] * SWEEP["val"] + SWEEP["test"]) / inference_speed[measured]
        total += SWEEP["epochs"] * refill_seconds.get(measured, 0.0)
    return total


def synthetic_raw(num_train, num_test, seed=0):
    """Random uint8 MNIST-shaped data as utils.RawData: what a sweep ships to its workers."""
    rng = np.random.default_rng(seed)
    return utils.RawData(
        rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, num_train).astype(np.uint8),
        rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, num_test).astype(np.uint8),
        record={"data": f"synthetic {seed}", "data_sha256": None},
    )


def measure_jobs(num_images, epochs):
    """Wall seconds of the default sweep (the five variants at main.py's
    defaults, --jit_compile measure) on the same synthetic data, at --jobs 1
    (one after the other in this process) and at --jobs auto (side by side
    in worker processes, the local cluster's start included), each first
    with no remembered compile-path choice (every model times both paths)
    and then again with the choices that run remembered:
    {"1": s, "1 remembered": s, "auto": s, "auto remembered": s}, the jobs
    auto used, and the largest test accuracy gap between any two runs."""
    import os
    import tempfile

    data = synthetic_raw(num_images, min(num_images, SWEEP["test"]))
    config = Config.of(DEFAULTS, epochs=epochs, verbose=0)
    plan = [Training(name, config) for name in VARIANTS]
    wall, accuracies = {}, {}
    keras_home = os.environ.get("KERAS_HOME")
    try:
        for jobs in (1, "auto"):
            with tempfile.TemporaryDirectory() as home:
                os.environ["KERAS_HOME"] = home  # nothing remembered yet; worker processes inherit it
                for label in (str(jobs), f"{jobs} remembered"):
                    start = time.perf_counter()
                    with Executor(jobs, None, len(plan)) as executor:
                        done = executor.run(plan, data)
                    wall[label] = time.perf_counter() - start
                    accuracies[label] = [finished.result.test_accuracy for finished in done]
                    print(
                        f"  default sweep, {num_images} images, {epochs} epochs, --jobs {jobs} "
                        f"({executor.jobs} at once){', compile paths remembered' if 'remembered' in label else ''}: "
                        f"{wall[label]:.1f} s",
                        flush=True,
                    )
    finally:
        if keras_home is None:
            os.environ.pop("KERAS_HOME", None)
        else:
            os.environ["KERAS_HOME"] = keras_home
    runs = list(accuracies.values())
    largest_gap = max(abs(a - b) for run in runs[1:] for a, b in zip(runs[0], run))
    return wall, jobs_for("auto", len(plan)), largest_gap


def measure_steps_per_call(batch_sizes, counts, steps, repeats):
    """Training steps per second at each batch size, with each count of steps
    per call into TensorFlow (Keras's steps_per_execution), on both compile
    paths: {path: {model: {batch: {count: steps per second}}}}, medians over
    `repeats` epochs of `steps` steps after a warm-up one, taken in turns
    across the paths, models and counts of one batch size."""
    figures = {}
    for batch_size in batch_sizes:
        images, labels = synthetic_mnist(steps * batch_size)
        epochs = {}  # (path, name, count): one training epoch of a model of its own
        for path, jit_compile in PATHS.items():
            settings = bench_config(batch_size, DEFAULTS["inference_batch_size"], jit_compile)
            for name in ("lenet", "lenet_fc_bn2"):
                for count in counts:
                    model = models_handling.build_and_compile(name, settings)

                    def epoch(model=model, settings=settings, count=count, images=images, labels=labels):
                        models_handling.fit(model, images, labels, settings, epochs=1, steps_per_call=count)

                    epoch()  # warm-up: tracing, compiling
                    epochs[path, name, count] = epoch
        times = {key: [] for key in epochs}
        for _ in range(repeats):
            for key, epoch in epochs.items():
                times[key].append(seconds(epoch))
        for (path, name, count), durations in times.items():
            rate = steps / statistics.median(durations)
            figures.setdefault(path, {}).setdefault(name, {}).setdefault(str(batch_size), {})[str(count)] = rate
            print(f"  batch {batch_size}, {count} steps per call, {path}, {name}: {rate:.0f} steps/s", flush=True)
    return figures


def main(argv=None):
    parser = OneLineErrorParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images",
        type=int_up_to(LIMITS["images"]),
        default=FULL_RUN["images"],
        help=f"training images per epoch (1 to {LIMITS['images']})",
    )
    parser.add_argument(
        "--batch_size",
        type=int_up_to(LIMITS["batch_size"]),
        default=DEFAULTS["batch_size"],
        help=f"training batch size, 1 to {LIMITS['batch_size']}",
    )
    parser.add_argument(
        "--inference_batch_size",
        type=int_up_to(LIMITS["batch_size"]),
        default=DEFAULTS["inference_batch_size"],
        help=f"as main.py's, 1 to {LIMITS['batch_size']}",
    )
    parser.add_argument(
        "--repeats",
        type=int_up_to(LIMITS["repeats"]),
        default=FULL_RUN["repeats"],
        help=f"timed repetitions per figure (1 to {LIMITS['repeats']})",
    )
    parser.add_argument(
        "--output",
        help="a JSON file for the figures; by default results/bench.json for a "
        "full run (the default --images and --repeats) and no file for a shorter one",
    )
    parser.add_argument(
        "--part",
        choices=PARTS,
        default="all",
        help="paths: the compile paths and auto; jobs: the default sweep at --jobs 1 and auto, without and with "
        "remembered compile paths; steps: training steps per second at batch 2, 16 and 64 by steps per call into "
        "TensorFlow; bn: one BN layer's training pass against Keras's, a bare affine map and nothing; data: "
        "reading a full-size .npz with and without the CRC-32 check; curve: "
        "what validating every 10 steps adds to a training; against: the default sweep on --data by the checkout "
        "at --against and by this one, back to back (not in all); all: "
        "every part. A part alone updates its own figures in --output",
    )
    parser.add_argument(
        "--sweep_images",
        type=int_up_to(LIMITS["images"]),
        default=JOBS_SWEEP["images"],
        help="the jobs part's training images (the sweep trains on them less its validation split)",
    )
    parser.add_argument(
        "--sweep_epochs",
        type=int_up_to(LIMITS["epochs"]),
        default=JOBS_SWEEP["epochs"],
        help="the jobs part's epochs per model",
    )
    parser.add_argument("--data", help="the against part's dataset (as main.py's --data)")
    parser.add_argument("--against", help="the against part's other checkout of this project (a folder)")
    args = parser.parse_args(argv)
    if args.output is None and (args.images, args.repeats) == (FULL_RUN["images"], FULL_RUN["repeats"]):
        args.output = "results/bench.json"
    if args.output is not None:
        output = Path(args.output)
        if output.is_dir() or not output.suffix:
            parser.error(f"--output {output}: name a file such as bench.json, not a folder")
        try:
            files.make_writable_folder(output.parent, f"--output {output}: its folder")
        except utils.UsageError as error:
            parser.error(str(error))
    if args.images < FEWEST_TRUSTED_IMAGES:
        print(
            f"warning: {args.images} images make epochs too short to time well; the figures and the sweep "
            f"estimate below are rough (use --images {FEWEST_TRUSTED_IMAGES} or more)",
            file=sys.stderr,
        )

    record = {"settings": portable_settings(args), "machine": machine()}
    if args.part in ("all", "paths"):
        record.update(measure_paths(args))
    if args.part in ("all", "data"):
        record.update(measure_data_read(args))
    if args.part in ("all", "curve"):
        record.update(measure_validation_curve())
    if args.part in ("all", "jobs"):
        record.update(measure_parallelism(args))
    if args.part in ("all", "steps"):
        record.update(measure_steps(args))
    if args.part in ("all", "bn"):
        record.update(measure_bn(args))
    if args.part == "against":  # not in "all": it needs a dataset and a second checkout
        try:
            record.update(measure_against(args))
        except utils.UsageError as error:
            parser.error(str(error))
    if args.output is None:
        print("not written to a file (a shorter run than results/bench.json's; --output FILE keeps it)")
        return 0
    if args.part != "all" and Path(args.output).exists():  # a part alone keeps the other parts' figures
        earlier = json.loads(Path(args.output).read_text())
        # and their settings: this part's go beside them, under its own name
        part_settings = record.pop("settings")
        record = {**earlier, **record, f"{args.part}_settings": part_settings}
    try:
        files.write_text(args.output, json.dumps(record, indent=2) + "\n")
    except files.WriteError as error:
        print(f"bench.py: error: {error}", file=sys.stderr)
        return 1
    print(f"written to {args.output}")
    return 0


def portable_settings(args):
    """The flags a run measured with, as a committed results file keeps them:
    no folder of this machine. Where the figures were written is left out,
    --against is told by its commit (the against part records it) and
    --data by its name."""
    settings = {name: value for name, value in vars(args).items() if name not in ("output", "against")}
    if args.data is not None:
        settings["data"] = Path(args.data).name
    return settings


def machine():
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "cores": cores(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def measure_data_read(args):
    """The data part: seconds to read a 60,000 + 10,000-image .npz (stored,
    as numpy.savez writes it) with numpy's np.load, and as utils.load_raw
    reads it, every member checked against its CRC-32: medians of DATA_READS."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        raw = synthetic_raw(60_000, 10_000)
        path = Path(folder) / "mnist-shaped.npz"
        np.savez(path, x_train=raw.x_train, y_train=raw.y_train, x_test=raw.x_test, y_test=raw.y_test)

        def numpy_load():
            with np.load(path) as archive:
                return [archive[key] for key in utils.NPZ_KEYS]

        medians = {}
        for name, read in (("numpy_np_load", numpy_load), ("checked_load_raw", lambda: utils.load_raw(str(path)))):
            read()  # into the page cache
            medians[name] = statistics.median(seconds(read) for _ in range(DATA_READS))
        megabytes = path.stat().st_size / 1e6
    ratio = medians["checked_load_raw"] / medians["numpy_np_load"]
    print(
        f"\nreading a 70,000-image .npz ({megabytes:.0f} MB), median of {DATA_READS}: np.load "
        f"{medians['numpy_np_load'] * 1000:.0f} ms, with the CRC-32 check {medians['checked_load_raw'] * 1000:.0f} ms "
        f"({ratio:.2f}x)"
    )
    return {"data_read_seconds": medians}


def measure_validation_curve(train=4_250, val=750, every=10, epochs=2):
    """The curve part: what the seeds study's validation curve (validation
    accuracy every `every` steps, for steps to a target) adds to training
    lenet_fc_bn2 on the MNIST sample's sizes: seconds of `epochs` epochs
    without and with it, after a warm-up run of each."""
    from harness.callbacks import ValidationCurve

    images, labels = synthetic_mnist(train + val)
    splits = utils.Splits(images[:train], labels[:train], images[train:], labels[train:], images[:10], labels[:10])
    config = Config.of(DEFAULTS, epochs=epochs, verbose=0, jit_compile=False)

    def train_once(with_curve):
        extra = [ValidationCurve(splits.x_val, splits.y_val, splits.x_train, config, every)] if with_curve else []
        return models_handling.run_model("lenet_fc_bn2", splits, config, callbacks=extra).train_seconds

    figures = {}
    for with_curve in (False, True):
        train_once(with_curve)  # warm-up: tracing
        figures["with_curve" if with_curve else "without"] = train_once(with_curve)
    share = figures["with_curve"] / figures["without"] - 1
    print(
        f"\nlenet_fc_bn2, {epochs} epochs on {train} images: {figures['without']:.1f} s, with validation on {val} "
        f"images every {every} steps {figures['with_curve']:.1f} s (+{share:.0%})"
    )
    return {"validation_curve_seconds": {**figures, "every": every, "train": train, "val": val, "epochs": epochs}}


def measure_parallelism(args):
    """The jobs part: the default sweep at --jobs 1 and auto, without and with remembered compile paths."""
    print(
        f"\nthe default sweep on {args.sweep_images} synthetic images, {args.sweep_epochs} epochs per model, "
        f"at --jobs 1 and --jobs auto on {cores()} cores"
    )
    wall, jobs, gap = measure_jobs(args.sweep_images, args.sweep_epochs)
    speedup = wall["1"] / wall["auto"]
    for label, value in wall.items():
        print(f"{'--jobs ' + label:<52}{value:>6.1f} s")
    print(f"{'jobs speedup':<52}{speedup:>6.2f}x on {cores()} cores (test accuracies differ by at most {gap:.2g})")
    for label in ("1", "auto"):
        print(f"{'remembered compile paths, --jobs ' + label:<52}{wall[label] / wall[label + ' remembered']:>6.2f}x")
    return {
        "jobs": {
            "sweep_seconds": wall,
            "jobs_auto": jobs,
            "cores": cores(),
            "speedup": speedup,
            "largest_test_accuracy_gap": gap,
            "images": args.sweep_images,
            "epochs": args.sweep_epochs,
        }
    }


def measure_steps(args):
    """The steps part: steps per second at small and default batch sizes, one and several steps per call."""
    print(f"\ntraining steps per second, epochs of {STEPS_PART['steps']} steps, by steps per call into TensorFlow")
    rates = measure_steps_per_call(
        STEPS_PART["batch_sizes"], STEPS_PART["counts"], STEPS_PART["steps"], STEPS_PART["repeats"]
    )
    most = str(max(STEPS_PART["counts"]))
    gains = {
        f"{path}, {name}, batch {batch}": counts[most] / counts["1"]
        for path, models in rates.items()
        for name, batches in models.items()
        for batch, counts in batches.items()
    }
    for name, gain in gains.items():
        print(f"{most + ' steps per call vs 1, ' + name:<52}{gain:>6.2f}x")
    return {"steps_per_call": {"steps_per_second": rates, "gain": gains, **STEPS_PART}}


def measure_against(args):
    """The against part: the default sweep (main.py at every default) on
    --data, run by the checkout at --against and by this one, back to back,
    at --jobs 1 and then auto; this checkout twice, the second run reusing
    the compile paths the first remembered. Wall seconds and test accuracies
    per run; the speed-ups over --against's run."""
    if args.data is None or args.against is None:
        raise utils.UsageError("--part against needs --data PATH (a dataset main.py reads) and --against DIR")
    import os
    import subprocess
    import tempfile

    data, against = Path(args.data).resolve(), Path(args.against).resolve()
    if not (against / "main.py").is_file():
        raise utils.UsageError(f"--against {args.against}: no main.py there; name a checkout of this project")
    here = Path(__file__).resolve().parent
    runs = {}
    for jobs in ("1", "auto"):
        with tempfile.TemporaryDirectory() as scratch:
            checkouts = (("before", against, "before"), ("first run", here, "now"), ("remembered", here, "now"))
            for label, tree, home in checkouts:
                results = Path(scratch) / label.replace(" ", "_")
                command = [sys.executable, "main.py", "--data", str(data), "--jobs", jobs, "--verbose", "0"]
                command += ["--flag_visualizations", "0", "--results_dir", str(results)]
                environment = {**os.environ, "KERAS_HOME": str(Path(scratch) / home)}  # nothing remembered at first
                start = time.perf_counter()
                subprocess.run(command, cwd=tree, env=environment, check=True, stdout=subprocess.DEVNULL)
                wall = time.perf_counter() - start
                summary = json.loads((results / "summary.json").read_text())
                accuracies = {name: round(model["test_accuracy"], 4) for name, model in summary.items()}
                runs[f"{jobs}, {label}"] = {"seconds": wall, "test_accuracy": accuracies}
                print(f"  --jobs {jobs}, {label}: {wall:.0f} s, test accuracies {accuracies}", flush=True)
    speedups = {
        f"{jobs}, {label}": runs[f"{jobs}, before"]["seconds"] / runs[f"{jobs}, {label}"]["seconds"]
        for jobs in ("1", "auto")
        for label in ("first run", "remembered")
    }
    for label, speedup in speedups.items():
        print(f"{'against --against, --jobs ' + label:<52}{speedup:>6.2f}x")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=against, capture_output=True, text=True).stdout.strip()
    return {"against": {"runs": runs, "speedup": speedups, "data": data.name, "against_commit": commit or None}}


def measure_bn_layers(repeats):
    """Microseconds of one training-mode forward and backward pass through
    one normalization at each of lenet_fc_bn2's BN places (batch 64), on both
    compile paths: ours (lenet.BatchNorm, recording its window too), Keras's
    BatchNormalization, a bare per-channel affine map x * gamma + beta (the
    least any BN computes), and nothing (the timing's own floor). Medians of
    `repeats` repetitions taken in turns; {path: {layer: {place: us}}}."""
    from lenet import BatchNorm, along_rows, as_rows

    class Affine(keras.layers.Layer):
        """x * gamma + beta in the layout ours computes in (a row per example),
        the fastest way to it measured here: broadcasting the 6 or 16
        channels along the last axis instead took C1 1.7 times as long on
        TensorFlow's kernels (1,231 against 721 us, two runs of this part)."""

        def build(self, input_shape):
            self.gamma = self.add_weight(shape=input_shape[-1:], initializer="ones")
            self.beta = self.add_weight(shape=input_shape[-1:], initializer="zeros")

        def call(self, x, training=None):
            rows = as_rows(x)
            scaled = rows * along_rows(self.gamma, rows) + along_rows(self.beta, rows)
            return keras.ops.reshape(scaled, keras.ops.shape(x))

    layers = {
        "ours": lambda: BatchNorm(epsilon=DEFAULTS["epsilon"], window_size=DEFAULTS["window_size"]),
        "keras": lambda: keras.layers.BatchNormalization(epsilon=DEFAULTS["epsilon"]),
        "affine": Affine,
        "nothing": lambda: keras.layers.Identity(),
    }
    rng = np.random.default_rng(0)
    passes = {}
    for place, shape in BN_PART["shapes"].items():
        x = tf.constant(rng.normal(size=shape), tf.float32)
        upstream = tf.constant(rng.normal(size=shape), tf.float32)
        for path, jit_compile in PATHS.items():
            for name, make in layers.items():
                layer = make()
                layer.build(shape)

                @tf.function(jit_compile=jit_compile)
                def forward_and_backward(x=x, upstream=upstream, layer=layer):
                    with tf.GradientTape() as tape:
                        tape.watch(x)
                        loss = tf.reduce_sum(layer(x, training=True) * upstream)
                    return tape.gradient(loss, [x, *layer.trainable_variables])

                forward_and_backward()  # tracing, compiling
                passes[path, name, place] = forward_and_backward
    times = {key: [] for key in passes}
    for _ in range(repeats):
        for key, one_pass in passes.items():
            start = time.perf_counter()
            for _ in range(BN_PART["calls"]):
                one_pass()
            times[key].append(1e6 * (time.perf_counter() - start) / BN_PART["calls"])
    figures = {}
    for (path, name, place), durations in times.items():
        figures.setdefault(path, {}).setdefault(name, {})[place] = statistics.median(durations)
    return figures


def measure_bn(args):
    """The bn part: what one BN layer's training pass costs, against Keras's, a bare affine map and nothing."""
    print(
        "\none normalization's training-mode forward and backward pass at batch 64, microseconds, "
        f"{args.repeats} repetitions"
    )
    figures = measure_bn_layers(args.repeats)
    places = list(BN_PART["shapes"])
    for path, per_layer in figures.items():
        print(f"{path:<12}" + "".join(f"{place:>9}" for place in places) + f"{'all four':>10}")
        for name, per_place in per_layer.items():
            print(f"  {name:<10}" + "".join(f"{per_place[place]:>9.0f}" for place in places), end="")
            print(f"{sum(per_place.values()):>10.0f}")
    return {"bn_layer_microseconds": {"figures": figures, **BN_PART}}


def measure_paths(args):
    """The paths part: both compile paths and auto, per model."""
    print(
        f"{args.images} synthetic images, training batch {args.batch_size}, inference batch "
        f"{args.inference_batch_size}, {args.repeats} repetitions; paths: XLA, TensorFlow's kernels, auto"
    )
    choices = measure_choices(args.batch_size, args.images)
    figures = with_auto(measure(args.batch_size, args.inference_batch_size, args.images, args.repeats), choices)
    # What a model's start costs: on a fixed path its first step, which compiles
    # (as timed while choosing); under auto the whole choice.
    startup = {path: {name: choice.compile_seconds[path] for name, choice in choices.items()} for path in PATHS}
    startup["auto"] = {name: choice.seconds for name, choice in choices.items()}
    sweep = {
        path: sweep_seconds(figures["train"][path], figures["inference"][path], figures["refill"][path], startup[path])
        for path in figures["train"]
    }
    train, inference = figures["train"], figures["inference"]
    ratios = {
        "auto_sweep_vs_faster_fixed_path": sweep["auto"] / min(sweep["xla"], sweep["tensorflow"]),
        "xla_sweep_vs_auto_sweep": sweep["xla"] / sweep["auto"],
        **{
            f"fc_bn2_train_vs_lenet_train, {path}": train[path]["lenet_fc_bn2"] / train[path]["lenet"] for path in train
        },
        **{
            f"fc_bn2_train_vs_keras_bn_train, {path}": train[path]["lenet_fc_bn2"] / train[path][KERAS_BN_VARIANT]
            for path in train
        },
        **{
            f"inference_batch_{args.inference_batch_size}_vs_{args.batch_size}, {path}, {name}": inference[path][name]
            / figures["inference_at_training_batch"][path][name]
            for path in PATHS
            for name in MODELS
        },
    }
    # What the `precise` rule adds to a full-data epoch (51,000 training images).
    refill_share = {
        path: {name: refill / (SWEEP["train"] / train[path][name]) for name, refill in per_model.items()}
        for path, per_model in figures["refill"].items()
    }

    columns = {
        "train": "train",
        "inference": f"infer@{args.inference_batch_size}",
        "inference_at_training_batch": f"infer@{args.batch_size}",
    }
    print(f"\nimages per second\n{'path':<11}{'model':<16}" + "".join(f"{title:>13}" for title in columns.values()))
    for path in train:
        for name in MODELS:
            print(f"{path:<11}{name:<16}" + "".join(f"{figures[kind][path][name]:>13.0f}" for kind in columns))
    print(
        "\nauto chose: "
        + ", ".join(f"{name} {choice.path()} ({choice.seconds:.1f} s to choose)" for name, choice in choices.items())
    )
    for name, value in ratios.items():
        print(f"{name:<52}{value:>6.2f}x")
    for path, per_model in figures["refill"].items():
        for name, refill in per_model.items():
            print(
                f"{'refill, ' + path + ', ' + name:<52}{refill * 1000:>6.0f} ms, {refill_share[path][name]:.2%} "
                f"of a {SWEEP['train']:,}-image training epoch"
            )
    for path, total in sweep.items():
        print(f"{'estimated default sweep (--model all), ' + path:<52}{total / 60:>6.1f} min")

    return {
        "train_images_per_second": train,
        "inference_images_per_second": inference,
        "inference_images_per_second_at_training_batch": figures["inference_at_training_batch"],
        "auto_choices": {name: choice.record() for name, choice in choices.items()},
        "ratios": ratios,
        "refill_seconds": figures["refill"],
        "refill_share_of_a_full_training_epoch": refill_share,
        "estimated_default_sweep_seconds": sweep,
    }


if __name__ == "__main__":
    sys.exit(main())
