"""`--jit_compile measure`: pick, for one model on this machine, the faster way to
run its training step, XLA (jit_compile=True) or TensorFlow's own kernels
(False), by timing a few training steps both ways.

Neither path wins everywhere: on one 2-core CPU XLA trained LeNet 1.3 times
faster, on another TensorFlow's kernels were 1.5 times faster, so the run
measures instead of guessing. Both ways compute the same network; results
differ only by float rounding.
"""

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from harness import files

# Timed training steps: ROUNDS rounds, each STEPS steps on one path and then
# STEPS on the other, after one warm-up step each (which compiles). The
# medians of the steps' durations decide; alternating keeps a slow spell of a
# shared machine from landing on one path only.
ROUNDS = 3
STEPS = 8
PATH_NAMES = {True: "XLA", False: "TensorFlow's kernels"}  # by jit_compile
PATH_KEYS = {True: "xla", False: "tensorflow"}  # by jit_compile: the keys of the timings' dicts


@dataclass(frozen=True)
class JitChoice:
    jit_compile: bool  # the faster path: True for XLA
    ms_per_step: dict  # {"xla": median ms, "tensorflow": median ms}
    compile_seconds: dict  # {"xla": s, "tensorflow": s}: each path's first step, which compiles it
    seconds: float  # what choosing cost in all, both compiles included
    remembered: bool = False  # True: read from this machine's record (remembered_choice), not timed now

    def path(self):
        return PATH_NAMES[self.jit_compile]

    def describe(self):
        chosen, other = PATH_KEYS[self.jit_compile], PATH_KEYS[not self.jit_compile]
        timings = (
            f"{self.path()} ({self.ms_per_step[chosen]:.2f} ms per training step) over "
            f"{PATH_NAMES[not self.jit_compile]} ({self.ms_per_step[other]:.2f} ms)"
        )
        if self.remembered:
            return f"{timings}, as chosen on this machine before (choosing cost {self.seconds:.1f} s then)"
        return (
            f"{timings}; chosen in {self.seconds:.1f} s, of which compiling took "
            f"{self.compile_seconds['xla']:.1f} s (XLA) and {self.compile_seconds['tensorflow']:.1f} s (TensorFlow)"
        )

    def record(self):
        """The choice as summary.json holds it; `seconds` is what choosing cost when it was timed."""
        return {
            "xla": self.jit_compile,
            "ms_per_step": self.ms_per_step,
            "compile_seconds": {path: round(value, 2) for path, value in self.compile_seconds.items()},
            "seconds": round(self.seconds, 2),
            "remembered": self.remembered,
        }

    @classmethod
    def from_record(cls, record):
        return cls(
            record["xla"],
            record["ms_per_step"],
            record["compile_seconds"],
            record["seconds"],
            record.get("remembered", False),
        )


# ---------------------------------------------------------------- the choice remembered per machine
#
# The faster path depends on the machine, TensorFlow's and Keras's versions
# and the model's shape, and on nothing a rerun changes, so a choice is kept
# in the user's Keras folder (where Keras keeps its downloads: $KERAS_HOME,
# else ~/.keras) under what decided it, and reused. A damaged or foreign file
# is ignored and rewritten; a folder that cannot be written only means the
# next run times again.

RECORD_VERSION = 1


def record_path():
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "lenet_bn" / "compile_paths.json"


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def choice_key(model_name, config, threads, steps_per_call):
    """What decides the faster path for one model: this machine's CPU, the
    libraries' versions, the network's shape and how a step runs."""
    import keras
    import tensorflow as tf

    key = {
        "cpu": cpu_model(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "model": model_name,
        "threads": threads,
        "steps_per_call": steps_per_call,
    }
    key.update(
        {name: getattr(config, name) for name in ("batch_size", "precision", "devices", "bn_placement", "output_size")}
    )
    return json.dumps(key, sort_keys=True)


def read_records():
    """{key: JitChoice record} from the file; {} when it is missing, damaged or not ours."""
    try:
        content = json.loads(record_path().read_text())
        choices = content["choices"] if content.get("version") == RECORD_VERSION else {}
        return {key: JitChoice.from_record(record).record() for key, record in choices.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def remembered_choice(key):
    record = read_records().get(key)
    return None if record is None else JitChoice.from_record({**record, "remembered": True})


def remember(key, choice):
    """Add `choice` under `key`, under the file's lock; False if it could not be written."""
    path = record_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with files.file_lock(path):
            records = read_records()
            records[key] = {**choice.record(), "remembered": False}
            files.write_text(path, json.dumps({"version": RECORD_VERSION, "choices": records}, indent=1) + "\n")
        return True
    except (OSError, files.WriteError):
        return False


def step_seconds(model, iterator):
    """Seconds of one call of `model`'s current train function, which runs
    model.steps_per_execution training steps (a compiled function returns
    once its steps have run)."""
    start = time.perf_counter()
    model.train_function(iterator)
    return time.perf_counter() - start


def choose_jit_compile(model, step_batches):
    """Time `model`'s training step with and without XLA on `step_batches`
    (a tf.data dataset of equal-sized training batches), leave `model`
    compiled for the faster path and exactly as it was before (weights, BN
    windows and optimizer state restored), and return the JitChoice.

    Each path's train function is made once and the chosen one is kept, so
    the compile that choosing paid for is not paid again when training starts.
    `model` must be compiled, with an optimizer that has not yet stepped.
    """
    start = time.perf_counter()
    model.optimizer.build(model.trainable_variables)  # its starting state, to restore
    weights = model.get_weights()
    optimizer_state = [variable.numpy() for variable in model.optimizer.variables]

    functions, compile_seconds, durations = {}, {}, {True: [], False: []}
    for xla in (True, False):
        model.jit_compile = xla
        model.make_train_function(force=True)
        functions[xla] = model.train_function
        # Through fit once, which also builds what a step needs (metrics).
        began = time.perf_counter()
        model.fit(step_batches.take(1), verbose=0, shuffle=False)
        compile_seconds[PATH_KEYS[xla]] = time.perf_counter() - began
    steps = iter(step_batches.repeat())
    per_call = model.steps_per_execution  # each timed call runs that many steps, as training will
    for _ in range(ROUNDS):
        for xla in (True, False):
            model.jit_compile, model.train_function = xla, functions[xla]
            calls = max(1, STEPS // per_call)
            durations[xla] += [step_seconds(model, steps) / per_call for _ in range(calls)]

    milliseconds = {xla: 1000 * statistics.median(times) for xla, times in durations.items()}
    faster = milliseconds[True] < milliseconds[False]
    model.jit_compile, model.train_function = faster, functions[faster]
    model.set_weights(weights)
    for variable, value in zip(model.optimizer.variables, optimizer_state):
        variable.assign(value)
    return JitChoice(
        faster,
        {PATH_KEYS[xla]: value for xla, value in milliseconds.items()},
        compile_seconds,
        time.perf_counter() - start,
    )
