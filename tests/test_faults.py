"""Faults a user's machine meets: a write that fails (a full disk) at each
kind of file a run writes, and a damaged backup under --resume. Each is one
line and a non-zero exit, and nothing complete before is lost."""

import errno
import fcntl
import shutil
from pathlib import Path

import keras
import matplotlib.figure
import pytest

import models_handling
from common import files
from conftest import mnist_like, write_npz
from test_main import run_main

FAST = ["--epochs", 1, "--verbose", 0, "--jit_compile", 0]
NO_SPACE = OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def earlier_results(tmp_path_factory):
    """A results folder an earlier run wrote (lenet, with plots), and its data."""
    folder = tmp_path_factory.mktemp("earlier")
    data = write_npz(folder / "data.npz", *mnist_like())
    code = __import__("main").main(
        [
            "--model",
            "lenet",
            "--data",
            str(data),
            "--results_dir",
            str(folder / "results"),
            "--jobs",
            "1",
            *map(str, FAST),
        ]
    )
    assert code == 0
    return data, folder / "results"


def snapshot(folder):
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def fail_writes_to(monkeypatch, name_part):
    """Path.write_text fails, as on a full disk, for files whose name holds `name_part`."""
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if name_part in self.name:
            raise NO_SPACE
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def fail_savefig(monkeypatch):
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda *args, **kwargs: (_ for _ in ()).throw(NO_SPACE))


def fail_model_save(monkeypatch):
    monkeypatch.setattr(keras.Model, "save", lambda *args, **kwargs: (_ for _ in ()).throw(NO_SPACE))


def no_free_space(monkeypatch):
    """The disk has 1 KiB free: the backup's weights are not started (h5py crashes after a failed write)."""
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1024))


WRITES = {
    "history CSV": (lambda mp: fail_writes_to(mp, "lenet_bn1_history"), "lenet_bn1_history.csv"),
    "plot": (fail_savefig, "lenet_bn1_accuracy.png"),
    "saved model": (fail_model_save, "lenet_bn1.keras"),
    "summary.json": (lambda mp: fail_writes_to(mp, "summary"), "summary.json"),
    "backup": (no_free_space, "backup/lenet_bn1"),
    "backup progress": (lambda mp: fail_writes_to(mp, "progress"), "progress.json"),
}


@pytest.mark.parametrize("fault", WRITES, ids=WRITES)
def test_a_failed_write_is_one_line_exit_1_and_every_earlier_file_stays_whole(
    fault, earlier_results, tmp_path, capsys, monkeypatch
):
    data, earlier = earlier_results
    results = tmp_path / "results"
    shutil.copytree(earlier, results)
    before = snapshot(results)
    inject, named = WRITES[fault]
    inject(monkeypatch)
    code, out, err = run_main(["--model", "lenet_bn1", "--data", data, "--results_dir", results, *FAST], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0] and named in lines[0], lines[0]
    after = snapshot(results)
    for path, content in before.items():
        assert after.get(path) == content, f"{path} changed or went"
    assert not [path.name for path in results.rglob("*.tmp*")]
    with open(results / ".lenet_bn1.training.lock") as lock:  # released: another run may take it at once
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


class StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt


def cut_short(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damaged", ["progress.json", "latest.weights.h5"])
def test_a_damaged_backup_is_set_aside_and_its_model_trains_from_epoch_1(damaged, tmp_path, capsys, monkeypatch):
    data = write_npz(tmp_path / "data.npz", *mnist_like())
    results = tmp_path / "results"
    arguments = ["--model", "lenet_bn1", "--data", data, "--results_dir", results, "--epochs", 2, "--verbose", 0]
    real_run_model = models_handling.run_model
    monkeypatch.setattr(
        models_handling,
        "run_model",
        lambda *args, callbacks=(), **options: real_run_model(
            *args, callbacks=[*callbacks, StopAfterFirstEpoch()], **options
        ),
    )
    assert run_main(arguments, capsys)[0] == 130
    backup = results / "backup" / "lenet_bn1"
    cut_short(backup / damaged)
    monkeypatch.setattr(models_handling, "run_model", real_run_model)

    code, out, err = run_main([*arguments, "--resume", 1], capsys)
    assert code == 0 and "Traceback" not in out + err, err
    said = [line for line in out.splitlines() if "cannot be read" in line]
    assert len(said) == 1 and said[0].startswith(f"lenet_bn1: its backup {backup}/ cannot be read"), out
    assert "training from epoch 1" in said[0] and "resuming after" not in out
    aside = [path for path in (results / "backup").iterdir() if path.name.startswith("lenet_bn1.damaged-")]
    assert len(aside) == 1 and (aside[0] / damaged).exists(), "moved aside, not deleted"
    assert (results / "lenet_bn1_history.csv").read_text().count("\n") == 3  # header and both epochs
