"""bench.py's command line and its arithmetic on given timings (timings
themselves are never tested)."""

import json

import pytest

import bench

# XLA trains lenet and Keras's BN faster, TensorFlow's kernels our BN network.
FAKE_PATHS = {
    "xla": {"lenet": 200.0, "lenet_fc_bn2": 100.0, "lenet_keras_bn": 90.0},
    "tensorflow": {"lenet": 150.0, "lenet_fc_bn2": 120.0, "lenet_keras_bn": 80.0},
}
FAKE_STEPS = {  # steps per second by batch size and steps per call
    path: {name: {"2": {"1": 400.0, "32": 800.0}} for name in ("lenet", "lenet_fc_bn2")}
    for path in ("xla", "tensorflow")
}


@pytest.fixture
def fake_measure(monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "measure_paths", lambda *args: calls.append(("paths", *args)) or FAKE_PATHS)
    monkeypatch.setattr(bench, "measure_steps", lambda *args: calls.append(("steps", *args)) or FAKE_STEPS)
    return calls


def test_the_quick_look_measures_the_paths_only_and_writes_nothing(fake_measure, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert bench.main([]) == 0
    assert fake_measure == [("paths", 64, 6_400, 3)]
    out = capsys.readouterr().out
    assert "xla: a lenet_fc_bn2 step takes 2.00x a lenet step" in out  # 200 against 100 steps/s
    assert "the faster path differs by model" in out
    assert list(tmp_path.iterdir()) == []


def test_all_parts_go_to_the_output_file(fake_measure, tmp_path):
    assert bench.main(["--part", "all", "--output", str(tmp_path / "bench.json"), "--repeats", "5"]) == 0
    record = json.loads((tmp_path / "bench.json").read_text())
    assert record["paths"]["faster_path"] == {"lenet": "xla", "lenet_fc_bn2": "tensorflow", "lenet_keras_bn": "xla"}
    assert record["paths"]["fc_bn2_step_over_lenet_step"]["tensorflow"] == pytest.approx(1.25)
    assert record["paths"]["ours_over_keras_bn_speed"]["tensorflow"] == pytest.approx(1.5)
    assert record["steps_per_call"]["gain"]["xla, lenet, batch 2"] == pytest.approx(2.0)
    assert record["settings"]["repeats"] == 5 and "output" not in record["settings"]
    assert record["machine"]["cores"] >= 1
    assert [call[0] for call in fake_measure] == ["paths", "steps"]


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
        ("--part", "jobs", "argument --part: invalid choice: 'jobs'"),
    ],
)
def test_a_flag_out_of_bounds_is_refused_before_measuring(flag, value, message, fake_measure, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main([flag, value])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not fake_measure
