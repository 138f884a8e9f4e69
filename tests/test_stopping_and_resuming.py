"""Runs that stop early or start twice: Ctrl-C, divergence, --resume, and
several runs writing into one folder at once."""

import contextlib
import json
import signal
import subprocess
import sys
from unittest import mock

import keras
import numpy as np

import models_handling
import utils
from conftest import interrupt_once_written, make_config, mnist_like, write_npz
from harness import results_folder
from lenet import VARIANTS
from test_main import ROOT, assert_no_temporary_files, assert_png, run_main
from training import callbacks, speed


def test_interrupt_keeps_the_models_that_finished(small_npz, tmp_path, capsys, monkeypatch):
    real_run_model = models_handling.run_model
    started = []

    def run_model_then_interrupt(name, splits, settings, **options):
        started.append(name)
        if len(started) == 3:
            raise KeyboardInterrupt
        return real_run_model(name, splits, settings, **options)

    monkeypatch.setattr(models_handling, "run_model", run_model_then_interrupt)
    results = tmp_path / "results"
    code, out, err = run_main(
        ["--model", "all", "--epochs", 1, "--data", small_npz, "--results_dir", results, "--verbose", 0], capsys
    )
    assert code == 130
    assert "interrupted: the models that finished (lenet, lenet_bn1) have their results in" in err
    assert list(json.loads((results / "summary.json").read_text())) == ["lenet", "lenet_bn1"]
    for name in ("lenet", "lenet_bn1"):
        assert_png(results / f"{name}_loss.png")
    assert_png(results / "comparison_loss.png")
    assert not (results / "lenet_bn2_history.csv").exists()
    assert_no_temporary_files(results)


def test_ctrl_c_in_a_real_run(tmp_path):
    """SIGINT to a real `--model all` run once its first model has finished."""
    data = write_npz(tmp_path / "data.npz", *mnist_like(num_train=600, num_test=50))
    results = tmp_path / "results"
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "--model",
            "all",
            "--epochs",
            "3",
            "--data",
            str(data),
            "--results_dir",
            str(results),
            "--verbose",
            "0",
            "--jobs",
            "1",
            "--jit_compile",
            "0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    summary = results / "summary.json"
    out, err = interrupt_once_written(process, summary, 240)
    assert process.returncode == 130, f"exit status {process.returncode}; stderr: {err!r}; stdout: {out[-500:]!r}"
    assert "Traceback" not in err
    finished = json.loads(summary.read_text())
    assert 1 <= len(finished) < 5
    for name in finished:
        assert (results / f"{name}_history.csv").stat().st_size > 0
        assert_png(results / f"{name}_accuracy.png")
    assert_no_temporary_files(results)


def test_a_ctrl_c_swallowed_by_a_library_still_stops_the_run(small_npz, tmp_path, capsys, monkeypatch):
    """A KeyboardInterrupt raised inside a garbage-collection callback is printed
    and dropped by Python; the request must still stop the run at the next step."""
    real_run_model = models_handling.run_model
    started = []

    def run_model_after_a_swallowed_ctrl_c(name, splits, settings, **options):
        started.append(name)
        if len(started) == 2:
            with contextlib.suppress(KeyboardInterrupt):  # what "Exception ignored in: ..." amounts to
                signal.raise_signal(signal.SIGINT)  # runs main's handler here, in this frame
        return real_run_model(name, splits, settings, **options)

    monkeypatch.setattr(models_handling, "run_model", run_model_after_a_swallowed_ctrl_c)
    original_hook, original_handler = sys.unraisablehook, signal.getsignal(signal.SIGINT)
    results = tmp_path / "results"
    code, out, err = run_main(
        ["--model", "all", "--epochs", 1, "--data", small_npz, "--results_dir", results, "--verbose", 0], capsys
    )
    assert code == 130, out
    assert started == ["lenet", "lenet_bn1"]
    assert list(json.loads((results / "summary.json").read_text())) == ["lenet"]
    # main put back what it replaced
    assert signal.getsignal(signal.SIGINT) is original_handler
    assert sys.unraisablehook is original_hook


def test_interrupt_before_any_model_finished_does_not_claim_results(small_npz, tmp_path, capsys, monkeypatch):
    def interrupt(*args, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(models_handling, "run_model", interrupt)
    code, out, err = run_main(["--model", "all", "--data", small_npz, "--results_dir", tmp_path / "results"], capsys)
    assert code == 130
    assert err.strip() == "interrupted before any model finished: no results were written"


def test_a_diverging_model_stops_at_once_and_the_sweep_goes_on(small_npz, tmp_path, capsys):
    """Adam at 1e38 makes the weights overflow within an epoch: the loss turns NaN."""
    results = tmp_path / "results"
    code, out, err = run_main(
        [
            "--model",
            "all",
            "--optimizer",
            "adam",
            "--learning_rate",
            "1e38",
            "--epochs",
            3,
            "--data",
            small_npz,
            "--results_dir",
            results,
            "--verbose",
            0,
        ],
        capsys,
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == len(VARIANTS)  # one line per model, no traceback, no TensorFlow warnings
    assert lines[0].startswith("lenet: diverged at epoch 1, step ")
    assert lines[0].endswith("(loss nan); stopped there; try a lower --learning_rate than 1e+38")
    summary = json.loads((results / "summary.json").read_text())
    assert list(summary) == list(VARIANTS)  # every model of the sweep ran
    for entry in summary.values():
        assert entry["diverged"]["epoch"] == 1 and entry["diverged"]["loss"] == "nan"
        assert entry["test_accuracy"] is None and entry["final_val_accuracy"] is None
        assert entry["epochs"] == 1  # stopped in the first epoch, not run to the third
    assert out.splitlines()[-1].split() == ["lenet_fc_bn2", "diverged", out.splitlines()[-1].split()[-1]]


def _write_entries(results_dir, prefix, count):
    for index in range(count):
        results_folder.update_summary(results_dir, f"{prefix}{index}", {"test_accuracy": index / count})


def test_runs_writing_into_one_folder_at_once_keep_every_entry(tmp_path):
    """Four processes each add 40 entries to one summary.json, all at once."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_entries, args=(tmp_path, prefix, 40)) for prefix in "abcd"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(summary) == sorted(f"{prefix}{index}" for prefix in "abcd" for index in range(40))


def test_an_interrupted_model_resumes_to_the_history_of_an_uninterrupted_run(small_npz, tmp_path, capsys, monkeypatch):
    """A run interrupted after epoch 2 and resumed ends as an uninterrupted run."""
    common = ["--model", "lenet_bn2", "--epochs", 3, "--data", small_npz, "--verbose", 0, "--flag_visualizations", 0]

    class InterruptAfterEpoch2(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    real_run_model = models_handling.run_model
    monkeypatch.setattr(
        models_handling,
        "run_model",
        lambda name, splits, settings, callbacks=(), **options: real_run_model(
            name, splits, settings, callbacks=[*callbacks, InterruptAfterEpoch2()], **options
        ),
    )
    resumed = tmp_path / "resumed"
    assert run_main([*common, "--results_dir", resumed], capsys)[0] == 130
    backup = resumed / "backup" / "lenet_bn2"
    assert (backup / "latest.weights.h5").exists()
    monkeypatch.setattr(models_handling, "run_model", real_run_model)
    assert run_main([*common, "--results_dir", tmp_path / "whole"], capsys)[0] == 0

    code, out, err = run_main([*common, "--results_dir", resumed, "--resume", 1], capsys)
    assert code == 0, err
    assert "lenet_bn2: resuming after epoch 2 from" in out
    assert (resumed / "lenet_bn2_history.csv").read_text() == (tmp_path / "whole" / "lenet_bn2_history.csv").read_text()
    whole, again = (
        json.loads((folder / "summary.json").read_text())["lenet_bn2"] for folder in (tmp_path / "whole", resumed)
    )
    assert again["epochs"] == 3 and again["test_accuracy"] == whole["test_accuracy"]
    assert again["test_loss"] == whole["test_loss"]
    assert not (resumed / "backup").exists()


def test_resume_skips_a_model_finished_with_the_same_settings_and_data(small_npz, tmp_path, capsys):
    results = tmp_path / "results"
    common = ["--model", "lenet", "--epochs", 1, "--data", small_npz, "--results_dir", results, "--verbose", 0]
    assert run_main(common, capsys)[0] == 0
    before = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in results.iterdir()}

    code, out, err = run_main([*common, "--resume", 1, "--verbose", 2], capsys)  # verbose changes no result
    assert code == 0, err
    assert "finished earlier with the same settings and data; skipped (--resume)" in out
    table = out.split("test accuracy")[-1]
    assert "lenet" in table and f"{json.loads(before['summary.json'][0])['lenet']['test_accuracy']:.4f}" in table
    assert {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in results.iterdir()} == before

    code, out, err = run_main([*common, "--resume", 1, "--window_size", 3], capsys)  # other settings: trained
    assert code == 0 and "skipped" not in out


def test_a_backup_of_other_settings_is_never_resumed(tmp_path, capsys):
    folder = tmp_path / "backup" / "lenet_bn2"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"settings": {"epochs": 5}, "data": "x", "val_split": 0.15}))
    (folder / "latest.weights.h5").write_bytes(b"weights of another run")
    callbacks.ResumableTraining(folder, {"settings": {"epochs": 3}, "data": "x", "val_split": 0.15}, True)
    assert "was left by a run with other settings or data: starting afresh" in capsys.readouterr().out
    assert not folder.exists()


def test_a_double_start_waits_for_the_model_the_other_run_trains_and_keeps_every_entry(tmp_path):
    """The same command started twice at once into one folder: whichever
    comes second waits while the other trains the model, then skips it,
    finished with the same settings and data; neither fails, no entry is lost."""
    data = write_npz(tmp_path / "data.npz", *mnist_like(num_train=400, num_test=40))
    results = tmp_path / "results"
    results_folder.update_summary(results, "lenet", {"test_accuracy": 0.5})  # an earlier run's entry
    command = [
        sys.executable,
        str(ROOT / "main.py"),
        "--model",
        "lenet_bn2",
        "--epochs",
        "4",
        "--data",
        str(data),
        "--results_dir",
        str(results),
        "--verbose",
        "0",
        "--jit_compile",
        "0",
        "--flag_visualizations",
        "0",
    ]
    runs = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [run.communicate(timeout=240) for run in runs]

    for run, (_, err) in zip(runs, outputs):
        assert run.returncode == 0 and "Traceback" not in err, err
    waited = [index for index, (out, _) in enumerate(outputs) if "waiting for it" in out]
    assert len(waited) == 1, outputs
    second, first = runs[waited[0]], runs[1 - waited[0]]
    out = outputs[waited[0]][0]
    assert f"lenet_bn2: another run (process {first.pid}) is training it into {results}/; waiting for it" in out
    assert "lenet_bn2: finished meanwhile by the other run with the same settings and data; skipped" in out
    summary = json.loads((results / "summary.json").read_text())
    assert summary["lenet"] == {"test_accuracy": 0.5}
    assert f"{summary['lenet_bn2']['test_accuracy']:.4f}" in out.split("test accuracy")[-1]
    assert second.pid != first.pid and not (results / "backup").exists()


def history_and_weights(steps_per_call, **changes):
    """lenet_fc_bn2 trained two epochs on small random data, at `steps_per_call`."""
    splits = utils.prepare(*mnist_like(num_train=200, num_test=20), val_split=0.2, seed=0)
    config = make_config(batch_size=8, epochs=2, **changes)
    with mock.patch.object(speed, "STEPS_PER_CALL", steps_per_call):
        result = models_handling.run_model("lenet_fc_bn2", splits, config)
    return result, [weight.numpy() for weight in result.model.weights]


def test_several_steps_per_call_train_exactly_as_one_step_per_call():
    # 160 training images at batch 8: 20 steps an epoch, so 32 per call is one short call an epoch, 7 leaves 6.
    (one, one_weights), (many, many_weights), (seven, seven_weights) = (
        history_and_weights(count) for count in (1, 32, 7)
    )
    assert many.history == one.history == seven.history
    assert all(np.array_equal(a, b) for a, b in zip(one_weights, many_weights))
    assert all(np.array_equal(a, b) for a, b in zip(one_weights, seven_weights))
    assert many.test_accuracy == one.test_accuracy


def test_with_several_steps_per_call_the_divergence_stop_still_names_the_first_step():
    # SGD at 1e38 overflows within the first steps; the step named is the same either way.
    one, _ = history_and_weights(1, optimizer="sgd", learning_rate=1e38)
    many, _ = history_and_weights(32, optimizer="sgd", learning_rate=1e38)
    assert one.diverged is not None and one.diverged == many.diverged
    assert one.diverged["step"] < 20  # within the first call of 20 steps: named, not the call's last
