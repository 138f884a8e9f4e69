"""bench.py's command line: where its figures go (timings themselves are never tested)."""

import json

import pytest

import bench
from harness.compile_path import JitChoice


def per_model(lenet, fc_bn2, keras_bn):
    return {"lenet": lenet, "lenet_fc_bn2": fc_bn2, "lenet_keras_bn": keras_bn}


# XLA trains lenet faster, TensorFlow's kernels the BN networks.
FAKE_FIGURES = {
    "train": {"xla": per_model(1000.0, 800.0, 700.0), "tensorflow": per_model(900.0, 850.0, 750.0)},
    "inference": {"xla": per_model(2000.0, 1900.0, 1800.0), "tensorflow": per_model(3000.0, 2900.0, 2800.0)},
    "inference_at_training_batch": {
        "xla": per_model(1000.0, 950.0, 900.0),
        "tensorflow": per_model(1500.0, 1450.0, 1400.0),
    },
    "refill": {
        "xla": {"lenet_fc_bn2": 0.05, "lenet_keras_bn": 0.06},
        "tensorflow": {"lenet_fc_bn2": 0.04, "lenet_keras_bn": 0.05},
    },
}
FAKE_CHOICES = {
    name: JitChoice(name == "lenet", {"xla": 1.0, "tensorflow": 1.0}, {"xla": 0.5, "tensorflow": 0.25}, 2.0)
    for name in ("lenet", "lenet_fc_bn2", "lenet_keras_bn")
}


@pytest.fixture
def fake_measure(monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "measure", lambda *args: calls.append(args) or FAKE_FIGURES)
    monkeypatch.setattr(bench, "measure_choices", lambda *args: calls.append(args) or FAKE_CHOICES)
    monkeypatch.setattr(bench, "measure_jobs", lambda *args: calls.append(args) or FAKE_JOBS)
    monkeypatch.setattr(bench, "measure_steps_per_call", lambda *args: calls.append(args) or FAKE_STEPS)
    monkeypatch.setattr(bench, "measure_bn_layers", lambda *args: calls.append(args) or FAKE_BN)
    monkeypatch.setattr(bench, "measure_data_read", lambda *args: calls.append(args) or FAKE_DATA_READ)
    monkeypatch.setattr(bench, "measure_validation_curve", lambda *args: calls.append(args) or {})
    return calls


FAKE_BN = {  # microseconds by path, layer and place
    path: {name: dict.fromkeys(("C1", "C3", "C5", "F6"), us) for name, us in (("ours", 500.0), ("nothing", 100.0))}
    for path in ("xla", "tensorflow")
}
FAKE_DATA_READ = {"data_read_seconds": {"numpy_np_load": 0.05, "checked_load_raw": 0.07}}
# wall seconds, jobs auto, largest accuracy gap
FAKE_JOBS = ({"1": 90.0, "1 remembered": 80.0, "auto": 50.0, "auto remembered": 45.0}, 2, 0.0)
FAKE_STEPS = {  # steps per second by batch size and steps per call
    path: {name: {"2": {"1": 400.0, "4": 500.0, "32": 800.0}} for name in ("lenet", "lenet_fc_bn2")}
    for path in ("xla", "tensorflow")
}


def test_a_quick_look_writes_no_file_and_warns_about_short_epochs(fake_measure, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--images", "640", "--repeats", "1"]) == 0
    out, err = capsys.readouterr()
    assert "not written to a file" in out
    assert "warning: 640 images make epochs too short to time well" in err
    assert not (tmp_path / "results").exists()


def test_a_full_run_writes_results_bench_json_with_the_refill_share(fake_measure, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert bench.main([]) == 0
    record = json.loads((tmp_path / "results" / "bench.json").read_text())
    # 0.05 s of refill against a 51,000-image epoch at 800 images/s (63.75 s).
    assert record["refill_share_of_a_full_training_epoch"]["xla"]["lenet_fc_bn2"] == pytest.approx(0.05 / 63.75)
    assert fake_measure[1] == (64, 1024, 60_000, 5)
    assert record["jobs"]["speedup"] == pytest.approx(1.8) and record["jobs"]["sweep_seconds"] == FAKE_JOBS[0]
    assert record["steps_per_call"]["gain"]["xla, lenet, batch 2"] == pytest.approx(2.0)
    assert record["bn_layer_microseconds"]["figures"] == FAKE_BN
    assert "all four" in capsys.readouterr().out
    assert record["machine"]["cores"] >= 1


def test_the_jobs_part_alone_updates_its_figures_and_keeps_the_others(fake_measure, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--output", "bench.json", "--part", "paths"]) == 0
    paths = json.loads((tmp_path / "bench.json").read_text())
    assert "jobs" not in paths and "train_images_per_second" in paths
    assert bench.main(["--output", "bench.json", "--part", "jobs"]) == 0
    both = json.loads((tmp_path / "bench.json").read_text())
    assert both["train_images_per_second"] == paths["train_images_per_second"]
    assert both["jobs"]["speedup"] == pytest.approx(1.8) and both["jobs"]["jobs_auto"] == 2
    out = capsys.readouterr().out
    assert "jobs speedup" in out and "1.80x on" in out
    assert "remembered compile paths, --jobs 1" in out and "1.12x" in out  # 90 s against 80 s
    assert "steps_per_call" not in both  # the steps part did not run
    # Each part's settings kept under its name, none naming a folder of this machine.
    assert both["settings"]["part"] == "paths" and both["jobs_settings"]["part"] == "jobs"
    assert "output" not in both["settings"] and "against" not in both["jobs_settings"]
    assert fake_measure[-1] == (12_800, 3)  # the sweep's images and epochs
    assert bench.main(["--output", "bench.json", "--part", "steps", "--data", str(tmp_path / "fashion-mnist")]) == 0
    record = json.loads((tmp_path / "bench.json").read_text())
    assert record["steps_settings"]["data"] == "fashion-mnist"  # by name, not by this machine's path
    steps = record["steps_per_call"]
    assert steps["gain"]["tensorflow, lenet_fc_bn2, batch 2"] == pytest.approx(2.0)  # 800 against 400 steps/s
    assert fake_measure[-1] == ((2, 16, 64), (1, 4, 32), 640, 5)


def test_auto_takes_each_models_chosen_path_and_pays_for_choosing(fake_measure, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--output", "bench.json"]) == 0
    record = json.loads((tmp_path / "bench.json").read_text())
    assert record["train_images_per_second"]["auto"] == per_model(1000.0, 850.0, 750.0)
    assert record["inference_images_per_second"]["auto"] == per_model(2000.0, 2900.0, 2800.0)

    # lenet on XLA, the four BN variants as lenet_fc_bn2 on TensorFlow's kernels,
    # each epoch 51,000 training images, 9,000 validation, a refill; the test
    # set once; and 2 s of choosing per model (on a fixed path, its compile).
    lenet = 10 * 51_000 / 1000 + (10 * 9_000 + 10_000) / 2000
    bn = 10 * 51_000 / 850 + (10 * 9_000 + 10_000) / 2900 + 10 * 0.04
    sweep = record["estimated_default_sweep_seconds"]
    assert sweep["auto"] == pytest.approx(lenet + 4 * bn + 5 * 2.0)
    xla_bn = 10 * 51_000 / 800 + (10 * 9_000 + 10_000) / 1900 + 10 * 0.05
    assert sweep["xla"] == pytest.approx(lenet + 4 * xla_bn + 5 * 0.5)
    assert record["ratios"]["auto_sweep_vs_faster_fixed_path"] == pytest.approx(
        sweep["auto"] / min(sweep["xla"], sweep["tensorflow"])
    )
    assert record["ratios"]["inference_batch_1024_vs_64, tensorflow, lenet"] == pytest.approx(2.0)
    assert record["auto_choices"]["lenet"] == {
        "xla": True,
        "ms_per_step": {"xla": 1.0, "tensorflow": 1.0},
        "compile_seconds": {"xla": 0.5, "tensorflow": 0.25},
        "seconds": 2.0,
        "remembered": False,
    }


@pytest.mark.parametrize(
    "output, message",
    [
        ("{tmp}", "name a file such as bench.json, not a folder"),
        ("/proc/x/bench.json", "--output /proc/x/bench.json: its folder /proc/x: cannot write there"),
    ],
)
def test_a_bad_output_is_refused_before_measuring(output, message, fake_measure, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--output", output.format(tmp=tmp_path)])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not fake_measure


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--images", "2000000", "argument --images: expected an integer from 1 to 1000000"),
        ("--batch_size", "0", "argument --batch_size: expected an integer from 1 to 65536"),
        ("--repeats", "100000", "argument --repeats: expected an integer from 1 to 1000"),
    ],
)
def test_a_flag_out_of_bounds_is_refused_before_measuring(flag, value, message, fake_measure, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main([flag, value])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not fake_measure


def test_the_against_part_names_what_it_lacks_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--part", "against", "--output", str(tmp_path / "b.json")])
    assert stop.value.code == 2 and "--part against needs --data PATH" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(
            ["--part", "against", "--data", "x.npz", "--against", str(tmp_path), "--output", str(tmp_path / "b.json")]
        )
    assert f"--against {tmp_path}: no main.py there" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()
