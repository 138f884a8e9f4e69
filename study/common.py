"""What the studies share: their folder and files, test accuracy of a trained
network, and running their trainings through the one executor
(harness.executor), in this process or side by side."""

import csv
import io
import json
from pathlib import Path

import numpy as np

from common import files
from harness.results_folder import outcome


def study_dir(config, name):
    return Path(config.results_dir) / name


def write_rows(path, rows):
    """A list of dicts as CSV, columns in the order they first appear (a
    column a row lacks is left empty in it)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files.write_text(path, text.getvalue())


def write_summary(folder, summary, name="summary.json"):
    files.write_text(Path(folder) / name, json.dumps(summary, indent=2) + "\n")


def accuracy_of(model, images, labels, batch_size):
    """Test accuracy of `model` predicting `batch_size` images at a time, and its logits."""
    logits = model.predict(images, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == labels)), logits


def run_trainings(config, plan, data, on_finished=None):
    """Every Training of `plan` on `data` (utils.RawData), through the
    executor at config.jobs and config.cluster: each one's ModelResult, in the
    order of `plan`. A line as each one ends."""
    from harness.executor import Executor  # TensorFlow's side: not for `studies.py NAME --help`

    def finished(index, done):
        print(f"  {plan[index].describe()}: {outcome(done)} ({done.train_seconds:.1f} s)", flush=True)
        if on_finished:
            on_finished(index, done)

    executor = Executor(config.jobs, config.cluster, len(plan))
    print(f"  {len(plan)} training(s) of {config.epochs} epochs {executor.describe()}", flush=True)
    with executor:
        return executor.run(plan, data, finished)


def first_step_at(curve, target, key="val_accuracy"):
    """The first measured step at which a probe's `curve` (study/probes.py's
    StepProbe) reaches `target` under `key` (ValidationCurve's validation
    accuracy by default), or None."""
    return next((step for step, accuracy in zip(curve["step"], curve[key]) if accuracy >= target), None)
