"""The results folder: each model's history CSV, plots and saved model, its
entry in summary.json (under a lock, so that runs writing into one folder at
once keep each other's entries), the comparison plots of every model there,
and reading them back for --resume.

Every file is replaced in one step (files.atomic_path): an interrupted run
leaves each one whole.
"""

import contextlib
import csv
import io
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import visualizations
from common.config import describe
from common.files import atomic_path, check_space, file_lock, saved_size, write_text
from common.records import HISTORY_KEYS, ModelResult
from utils import UsageError

SUMMARY_FILE = "summary.json"
# How long and where each model trained, and when it finished: it changes at
# every run, so it stays out of summary.json (whose bytes a rerun with the
# same settings and data reproduces) and out of git (.gitignore).
TIMINGS_FILE = "timings.json"
SUMMARY_DECIMALS = 5
# Settings that change how fast a model trains, not what it learns: models
# that differ only in these are compared side by side.
SPEED_SETTINGS = ("verbose", "jit_compile", "inference_batch_size")
BACKUP_FOLDER = "backup"  # <results_dir>/backup/<model>/: an unfinished model's last finished epoch


def outcome(result):
    """A finished training in words: its test figures, or where it diverged."""
    if result.diverged:
        return f"diverged at epoch {result.diverged['epoch']}, step {result.diverged['step']}"
    return f"test accuracy {result.test_accuracy:.4f}, test loss {result.test_loss:.4g}"


def run_identity(settings, record):
    """What a model's result depends on, in the form JSON holds it: its
    settings (a dict; `verbose` aside), the data by content (by name for a
    Keras download) and the validation split. `record` is main.py's run
    record or an entry of summary.json (or of a study's .trainings.json,
    study/grid.py, whose settings hold the model's name too)."""
    identity = {
        "settings": {key: value for key, value in settings.items() if key != "verbose"},
        "data": record.get("data_sha256") or record.get("data"),
        "val_split": record.get("val_split"),
    }
    return json.loads(json.dumps(identity))


def comparable(entry):
    """What must match for two summary.json entries to be plotted side by
    side: their data and every setting but the model and SPEED_SETTINGS."""
    identity = run_identity(entry.get("settings", {}), entry)
    identity["settings"] = {key: value for key, value in identity["settings"].items() if key not in SPEED_SETTINGS}
    return identity


def same_run(entry, identity):
    """Whether a summary.json (or .trainings.json) entry was trained with the run `identity`'s settings and data."""
    return entry is not None and run_identity(entry.get("settings", {}), entry) == identity


def remove_backup(folder):
    """Remove a model's backup (callbacks.ResumableTraining) once its results
    are written, and the backup folder once no model has one there."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        Path(folder).parent.rmdir()


def read_summary(results_dir, name=SUMMARY_FILE):
    """The results folder's summary (or timings, or a study's .trainings.json):
    {model name (or training label): its latest result}."""
    path = Path(results_dir) / name
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
        return summary
    except (OSError, ValueError) as error:
        raise UsageError(f"{path} is unreadable ({error}); move it away or choose another --results_dir") from None


def read_history(path):
    """A history CSV written by history_csv, as {key: per-epoch list}."""
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    return {key: [float(row[key]) for row in rows] for key in HISTORY_KEYS}


def history_csv(history):
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["epoch", *HISTORY_KEYS])
    for epoch, values in enumerate(zip(*(history[key] for key in HISTORY_KEYS)), start=1):
        writer.writerow([epoch, *(f"{value:.6f}" for value in values)])
    return rows.getvalue()


def save_results(result, config, run_record, recorded=None):
    """Write one model's history CSV, its PNGs, the trained model
    (<name>.keras, BN windows included), its entry in summary.json and in
    timings.json, and the comparison PNGs of the models the summary holds
    that were trained on the same data with the same settings.

    They go into config.results_dir, the PNGs only with
    config.flag_visualizations. Each file is replaced in one step, so an
    interrupted run leaves every file whole. Entries of other models in
    summary.json are kept. `recorded()` is called as soon as the entry is in
    summary.json.
    """
    results_dir, plots = Path(config.results_dir), bool(config.flag_visualizations)
    write_text(results_dir / f"{result.name}_history.csv", history_csv(result.history))
    if result.model is not None or result.model_file is not None:
        size = saved_size(result.model) if result.model is not None else len(result.model_file)
        check_space(results_dir / f"{result.name}.keras", size)
        with atomic_path(results_dir / f"{result.name}.keras") as temporary:
            if result.model is not None:
                result.model.save(temporary)
            else:
                temporary.write_bytes(result.model_file)
    if plots:
        for metric in ("accuracy", "loss"):
            visualizations.plot_history(
                result.history,
                metric,
                f"{describe(result.name)}: {metric}\n{outcome(result)}",
                results_dir / f"{result.name}_{metric}.png",
            )
    entry = {
        "test_accuracy": rounded(result.test_accuracy),
        "test_loss": rounded(result.test_loss),
        "diverged": result.diverged,
        "final_val_accuracy": None if result.diverged else rounded(result.history["val_accuracy"][-1]),
        "epochs": len(result.history["loss"]),
        "trainable_parameters": result.trainable_parameters,
        "settings": config.training_settings(),
        **run_record,
    }
    timings = {
        "train_seconds": round(result.train_seconds, 2),
        "where": result.where,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    summary = update_summary(results_dir, result.name, entry)
    update_summary(results_dir, result.name, timings, TIMINGS_FILE)
    if recorded is not None:
        recorded()
    save_comparison(results_dir, summary, plots, result.name)


def rounded(value):
    """A figure for summary.json: 5 decimals. The digits past them are float
    rounding, which changes with the number of threads a training ran on,
    and would make a rerun with the same settings and data rewrite the file."""
    return None if value is None else round(float(value), SUMMARY_DECIMALS)


def result_from_summary(results_dir, name, entry):
    """A model's result as summary.json and its history CSV hold it (for a
    model that a resumed sweep skips)."""
    history_path = Path(results_dir) / f"{name}_history.csv"
    history = read_history(history_path) if history_path.exists() else {key: [] for key in HISTORY_KEYS}
    timings = read_summary(results_dir, TIMINGS_FILE).get(name) or {}
    return ModelResult(
        name,
        history,
        entry.get("test_loss"),
        entry.get("test_accuracy"),
        timings.get("train_seconds", 0.0),
        entry.get("trainable_parameters"),
        diverged=entry.get("diverged"),
    )


def update_summary(results_dir, name, entry, file=SUMMARY_FILE):
    """Set summary.json's (or timings.json's, or a .trainings.json's) entry
    for `name`, keeping every other entry, and return the file's content as
    written. The read and the write happen under a file lock, so runs
    writing into one folder at once never lose each other's entries."""
    with file_lock(Path(results_dir) / file):
        summary = read_summary(results_dir, file)
        summary[name] = entry
        write_text(Path(results_dir) / file, json.dumps(summary, indent=2) + "\n")
    return summary


def save_comparison(results_dir, summary, plots=True, reference=None):
    """comparison_accuracy.png and comparison_loss.png of the models in
    `summary` whose history is in the folder and that were trained as
    `reference` was (the same data and settings: `comparable`), so that
    they never contradict summary.json nor put different experiments side
    by side; the others are named in one line. With fewer than two such
    models, or without plots, there are none."""
    results_dir = Path(results_dir)
    if reference is not None:
        alike = {name for name, entry in summary.items() if comparable(entry) == comparable(summary[reference])}
        left_out = sorted(set(summary) - alike)
        if left_out:
            print(
                f"comparison plots: {', '.join(left_out)} left out, trained on other data or settings than "
                f"{reference} (summary.json has both)"
            )
        summary = {name: entry for name, entry in summary.items() if name in alike}
    histories = {
        name: read_history(results_dir / f"{name}_history.csv")
        for name in summary
        if (results_dir / f"{name}_history.csv").exists()
    }
    for metric in ("accuracy", "loss"):
        path = results_dir / f"comparison_{metric}.png"
        if plots and len(histories) > 1:
            visualizations.plot_comparison(histories, metric, path)
        elif path.exists():
            path.unlink()
