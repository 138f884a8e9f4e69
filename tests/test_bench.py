"""bench.py's command line: where its figures go (timings themselves are never tested)."""

import json

import pytest

import bench

FAKE_FIGURES = (
    {"lenet": 1000.0, "lenet_fc_bn2": 800.0, "lenet_keras_bn": 700.0},
    {"lenet": 2000.0, "lenet_fc_bn2": 1900.0, "lenet_keras_bn": 1800.0},
    {"lenet_fc_bn2": 0.05, "lenet_keras_bn": 0.06},
)


@pytest.fixture
def fake_measure(monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "measure", lambda *args: calls.append(args) or FAKE_FIGURES)
    return calls


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
    assert record["refill_share_of_a_full_training_epoch"]["lenet_fc_bn2"] == pytest.approx(0.05 / 63.75)
    assert fake_measure[0][1:3] == (60_000, 5)


@pytest.mark.parametrize("output, message", [("{tmp}", "name a file such as bench.json, not a folder"),
                                             ("/proc/x/bench.json", "--output /proc/x/bench.json: its folder /proc/x: cannot write there")])
def test_a_bad_output_is_refused_before_measuring(output, message, fake_measure, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--output", output.format(tmp=tmp_path)])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not fake_measure


@pytest.mark.parametrize("flag, value, message", [
    ("--images", "2000000", "argument --images: expected an integer from 1 to 1000000"),
    ("--batch_size", "0", "argument --batch_size: expected an integer from 1 to 65536"),
    ("--repeats", "100000", "argument --repeats: expected an integer from 1 to 1000"),
])
def test_a_flag_out_of_bounds_is_refused_before_measuring(flag, value, message, fake_measure, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main([flag, value])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not fake_measure
