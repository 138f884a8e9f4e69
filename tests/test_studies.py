"""The studies at small settings: what each writes, and the claims they rest on."""

import csv
import json

import numpy as np
import pytest

import models_handling
import studies
import utils
from common import records
from conftest import make_config, mnist_like
from study import window
from test_main import assert_png

FAST = ["--epochs", "1", "--jit_compile", "0", "--jobs", "1"]


def run_study(argv, capsys):
    code = studies.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def read_csv(path):
    with open(path) as stream:
        return list(csv.DictReader(stream))


def read_summary(folder):
    return json.loads((folder / "summary.json").read_text())


def test_keras_check_writes_both_networks_curves_and_their_gap(small_npz, tmp_path, capsys):
    out = run_study(["keras_check", "--data", small_npz, "--results_dir", tmp_path, *FAST], capsys)
    folder = tmp_path / "keras_check"
    rows = read_csv(folder / "keras_check.csv")
    assert len(rows) == 1
    for label in ("ours", "keras"):
        for key in records.HISTORY_KEYS:
            assert np.isfinite(float(rows[0][f"{label}_{key}"]))
    gaps = read_summary(folder)["largest_gap_over_epochs"]
    # Same initial weights, same batches: training is the same to float rounding.
    assert gaps["loss"] < 1e-4
    # Two layers, not one network twice: at inference Keras's averages biased
    # variances, ours unbiased ones, so the validation losses differ a little.
    assert 0 < gaps["val_loss"] < 0.05
    assert read_summary(folder)["keras_momentum"] == pytest.approx(4 / 6)  # window 5: mean age 2 batches
    assert "largest gap" in out
    assert_png(folder / "keras_check.png")


def test_keras_check_on_real_mnist_the_two_networks_agree_after_one_epoch(mnist_npz, tmp_path, capsys):
    run_study(["keras_check", "--data", mnist_npz, "--results_dir", tmp_path, *FAST], capsys)
    summary = read_summary(tmp_path / "keras_check")
    # Same weights, same batches: training is identical to float rounding; at
    # inference both average the same refill batches' statistics (Keras's
    # variances biased, ours unbiased).
    assert summary["largest_gap_over_epochs"]["accuracy"] < 0.005
    assert summary["largest_gap_over_epochs"]["val_accuracy"] < 0.005  # both refilled from the same batches
    assert summary["test_accuracy"]["ours"] > 0.5  # it learned something: the gap is not chance


def test_seeds_gives_intervals_paired_differences_and_steps_to_the_target(small_npz, tmp_path, capsys):
    out = run_study(
        [
            "seeds",
            "--data",
            small_npz,
            "--results_dir",
            tmp_path,
            "--seeds",
            3,
            "--models",
            "lenet,lenet_fc_bn2",
            "--rules",
            "precise",
            "moving",
            "--every",
            2,
            *FAST,
        ],
        capsys,
    )
    folder = tmp_path / "seeds"
    rows = read_csv(folder / "seeds.csv")
    assert sorted((row["model"], row["bn_statistics"], row["seed"]) for row in rows) == [
        (model, rule, seed)
        for model in ("lenet", "lenet_fc_bn2")
        for rule in ("moving", "precise")
        for seed in ("0", "1", "2")
    ]
    summary = read_summary(folder)
    for rule in ("precise", "moving"):
        part = summary["rules"][rule]
        for name in ("lenet", "lenet_fc_bn2"):
            mine = [row for row in rows if (row["model"], row["bn_statistics"]) == (name, rule)]
            accuracies = [float(row["test_accuracy"]) for row in mine]
            # The sample standard deviation (ddof=1), and t(0.975, 2 df) = 4.303 for three seeds.
            mean, sd = np.mean(accuracies), np.std(accuracies, ddof=1)
            got = part["test_accuracy"][name]
            assert (got["mean"], got["sd"]) == (pytest.approx(mean), pytest.approx(sd))
            assert got["high"] - got["mean"] == pytest.approx(4.303 * sd / np.sqrt(3))
        # lenet's every seed reaches the target, which is the lowest of its bests.
        curves = read_csv(folder / "validation_curves.csv")
        lenet_best = [
            max(
                float(c["val_accuracy"])
                for c in curves
                if (c["model"], c["bn_statistics"], c["seed"]) == ("lenet", rule, seed)
            )
            for seed in ("0", "1", "2")
        ]
        assert part["target_val_accuracy"] == pytest.approx(min(lenet_best))
        assert None not in part["steps_to_target"]["lenet"]["per_seed"]
        assert sorted({int(c["step"]) for c in curves}) == [0, 2, 3]  # 170 images, batch 64: 3 steps in the epoch
        difference = part["differences"]["lenet_fc_bn2 - lenet"]
        per_seed = {name: part["test_accuracy"][name]["per_seed"] for name in ("lenet", "lenet_fc_bn2")}
        assert difference["mean"] == pytest.approx(np.mean(per_seed["lenet_fc_bn2"]) - np.mean(per_seed["lenet"]))
        assert_png(folder / f"seeds_{rule}_accuracy.png")
        assert_png(folder / f"seeds_{rule}_loss.png")
    # Without BN the rule has nothing to refill: the same numbers.
    assert summary["rules"]["precise"]["test_accuracy"]["lenet"] == summary["rules"]["moving"]["test_accuracy"]["lenet"]
    assert "precise minus moving, test accuracy, paired by seed:" in out
    assert "3 seeds: intervals will be wide" in out


@pytest.mark.parametrize(
    "setup, layer, networks", [("lenet", "F6", ("lenet", "lenet_fc_bn2")), ("paper", "H3", ("mlp", "mlp_bn"))]
)
def test_figure1_follows_one_sigmoid_input_at_regular_steps_over_seeds(
    setup, layer, networks, small_npz, tmp_path, capsys
):
    # 170 training images: batch 64 (lenet) 3 steps an epoch, 6 in two epochs;
    # batch 60 (paper) 3 steps an epoch, --steps 6 is two epochs.
    length = ["--epochs", 2] if setup == "lenet" else ["--steps", 6]
    out = run_study(
        [
            "figure1",
            "--setup",
            setup,
            "--data",
            small_npz,
            "--results_dir",
            tmp_path,
            "--every",
            4,
            "--probe_images",
            30,
            "--seeds",
            2,
            *length,
            "--jit_compile",
            0,
            "--jobs",
            1,
        ],
        capsys,
    )
    folder = tmp_path / "figure1"
    rows = read_csv(folder / f"figure1_{setup}.csv")
    summary = json.loads((folder / f"summary_{setup}.json").read_text())
    assert summary["layer"] == layer and summary["steps"] == 6
    for name in networks:
        for seed in ("0", "1"):
            mine = [row for row in rows if (row["model"], row["seed"]) == (name, seed)]
            assert [int(row["step"]) for row in mine] == [0, 4, 6]  # and the last step
            for row in mine:
                assert float(row["p15"]) <= float(row["p50"]) <= float(row["p85"])
            assert len({row["p50"] for row in mine}) > 1, "the input distribution never moved"
            # The last point is the trained network exactly as the run tested it: the probe left its statistics.
            assert float(mine[-1]["test_accuracy"]) == pytest.approx(summary["test_accuracy"][f"{name} seed {seed}"])
        assert summary[name]["final_test_accuracy"]["n"] == 2
    assert_png(folder / f"figure1_{setup}.png")
    assert "first step at 0.9" in out


def test_the_paper_networks_have_three_hidden_layers_of_100_with_bn_in_place_of_their_bias():
    from study.networks import build_network

    plain, with_bn = (build_network(name, make_config()) for name in ("mlp", "mlp_bn"))
    assert [layer.units for layer in plain.hidden.values()] == [100, 100, 100]
    assert all(layer.use_bias for layer in plain.hidden.values()) and not plain.norm
    assert not any(layer.use_bias for layer in with_bn.hidden.values()) and list(with_bn.norm) == ["H1", "H2", "H3"]
    outputs = with_bn.layer_outputs(np.zeros((2, 32, 32, 1), np.float32))
    assert outputs["H3"].shape == (2, 100) and outputs["logits"].shape == (2, 10)


def test_lr_runs_sgd_at_each_rate_and_the_default_optimizer(small_npz, tmp_path, capsys):
    run_study(["lr", "--data", small_npz, "--results_dir", tmp_path, "--rates", 0.1, 1e38, *FAST], capsys)
    folder = tmp_path / "lr"
    rows = read_csv(folder / "lr.csv")
    runs = sorted((row["model"], row["optimizer"], float(row["learning_rate"])) for row in rows)
    assert runs == (
        [
            ("lenet", "adam", 0.001),
            ("lenet", "sgd", 0.1),
            ("lenet", "sgd", 1e38),
            ("lenet_fc_bn2", "adam", 0.001),
            ("lenet_fc_bn2", "sgd", 0.1),
            ("lenet_fc_bn2", "sgd", 1e38),
        ]
    )
    for row in rows:
        # SGD at 1e38 overflows the weights: the run stops and has no test figures.
        assert row["diverged"] == str(float(row["learning_rate"]) == 1e38)
        if row["diverged"] == "True":
            assert row["test_accuracy"] == row["test_accuracy_moving"] == ""
            continue
        assert 0 <= float(row["test_accuracy"]) <= 1
        moving = float(row["test_accuracy_moving"])
        if row["model"] == "lenet":  # no BN: nothing to refill
            assert moving == float(row["test_accuracy"])
        else:
            assert 0 <= moving <= 1
    assert_png(folder / "lr.png")


def test_window_study_our_rule_does_not_move_with_batch_size_the_earlier_one_does(small_npz, tmp_path, capsys):
    run_study(
        [
            "window",
            "--data",
            small_npz,
            "--results_dir",
            tmp_path,
            "--windows",
            1,
            2,
            "--inference_batch_sizes",
            1,
            7,
            60,
            *FAST,
        ],
        capsys,
    )
    folder = tmp_path / "window"
    summary = read_summary(folder)
    assert summary["training_steps"] == 3
    assert {rule: list(points) for rule, points in summary["window_size"].items()} == {
        "moving": ["1", "2", "3"],
        "precise": ["1", "2", "3"],
    }
    precise, moving, earlier = summary["movement_with_batch_size"].values()
    for ours in (precise, moving):
        assert ours["same_predicted_classes"]
        assert ours["largest_logit_difference"] < 1e-5
    # The predicted batch's own statistics: one image has no variance in F6's
    # units, so its outputs there are beta alone, and the logits move.
    assert earlier["largest_logit_difference"] > 1e-3
    series = {row["series"] for row in read_csv(folder / "window.csv")}
    assert {"window_size, moving", "window_size, precise"} < series and len(series) == 5
    assert_png(folder / "window.png")


def test_a_window_cut_from_a_longer_one_equals_training_with_that_window(tmp_path):
    """The window study derives every window from one run; that must be exact."""
    from utils import prepare

    splits = prepare(*mnist_like(num_train=150, num_test=20), val_split=0.2, seed=0)
    settings = make_config(batch_size=32, epochs=1, window_size=3, bn_statistics="moving")
    direct = models_handling.build_and_compile("lenet_fc_bn2", settings)
    models_handling.train(direct, splits, settings)
    long_settings = make_config(batch_size=32, epochs=1, window_size=50, bn_statistics="moving")
    long = models_handling.build_and_compile("lenet_fc_bn2", long_settings)
    models_handling.train(long, splits, long_settings)

    derived = window.with_last_batches(long, 3)
    for name, norm in direct.norm.items():
        filled = int(norm.recorded_batches.numpy())
        assert filled == 4  # 120 images, batch 32: the window has wrapped
        expected = np.sort(norm.mean_window.numpy(), axis=0)
        np.testing.assert_allclose(np.sort(derived.norm[name].mean_window.numpy(), axis=0), expected, atol=1e-6)
    np.testing.assert_allclose(derived(splits.x_test), direct(splits.x_test), atol=1e-5)


STUDY_FLAGS_OUT_OF_BOUNDS = {
    "unit beyond H3": (["figure1", "--unit", "100"], "argument --unit: expected an integer from 0 to 99, got '100'"),
    "target above one": (["figure1", "--target", "1.5"], "argument --target: expected a positive number up to 1"),
    "endless probe": (
        ["figure1", "--probe_images", "10000000"],
        "argument --probe_images: expected an integer from 1 to 1000000",
    ),
    "every zero": (["figure1", "--every", "0"], "argument --every: expected an integer from 1 to 1000000"),
    "rate beyond float32": (
        ["lr", "--rates", "0.1", "1e39"],
        "argument --rates: expected a positive number up to 1e+38",
    ),
    "huge window": (["window", "--windows", "5", "100000"], "argument --windows: expected an integer from 1 to 10000"),
    "huge inference batch": (
        ["window", "--inference_batch_sizes", "1000000"],
        "argument --inference_batch_sizes: expected an integer from 1 to 65536",
    ),
    "endless epochs": (["seeds", "--epochs", "100000"], "argument --epochs: expected an integer from 1 to 10000"),
    "too many jobs": (["seeds", "--jobs", "257"], "argument --jobs: expected an integer from 1 to 256, got '257'"),
    "no jobs": (["lr", "--jobs", "0"], "argument --jobs: expected an integer from 1 to 256, got '0'"),
    "seeds, old spelling": (
        ["seeds", "--seeds", "0", "1", "2"],
        "--seeds takes one comma-separated value: write --seeds 0,1,2",
    ),
    "models, old spelling": (["seeds", "--models", "lenet", "lenet_bn1"], "write --models lenet,lenet_bn1"),
    "unknown model": (["grid", "--vary", "epochs=1", "--models", "lenet,resnet"], "'resnet' is not one of"),
    "no seeds": (["landscape", "--seeds", "0"], "argument --seeds: expected an integer from 1 to 1000"),
    "one seed in a study of several": (["figure1", "--seed", "3"], "write --seeds 3, (seed 3 alone) or --seeds N"),
}


@pytest.mark.parametrize("name", studies.SEVERAL_SEEDS)
def test_seeds_and_models_mean_one_thing_in_every_study(name):
    parser = studies.build_parser()
    required = ["--vary", "epochs=1"] if name == "grid" else []
    assert parser.parse_args([name, *required, "--seeds", "3"]).seeds == [0, 1, 2]
    assert parser.parse_args([name, *required, "--seeds", "3,7"]).seeds == [3, 7]
    assert parser.parse_args([name, *required, "--seeds", "7,"]).seeds == [7]
    if name in ("seeds", "grid"):
        assert parser.parse_args([name, *required, "--models", "lenet,lenet_bn2"]).models == ["lenet", "lenet_bn2"]


@pytest.mark.parametrize("arguments, message", STUDY_FLAGS_OUT_OF_BOUNDS.values(), ids=STUDY_FLAGS_OUT_OF_BOUNDS.keys())
def test_a_flag_out_of_bounds_is_refused_in_one_line_before_anything_is_built(
    arguments, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(utils, "load", lambda *args: pytest.fail("data loaded despite a bad flag"))
    with pytest.raises(SystemExit) as exit_:
        studies.main([*arguments, "--results_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip().count("\n") == 0 and message in err
    assert not list(tmp_path.iterdir())


def test_an_unknown_study_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        studies.main(["nonsense"])
    assert exit_.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_study_says_what_it_does_and_keeps_finished_runs_when_interrupted(small_npz, tmp_path, capsys, monkeypatch):
    real_run_model = models_handling.run_model
    calls = []

    def run_then_interrupt(*args, **options):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run_model(*args, **options)

    monkeypatch.setattr(models_handling, "run_model", run_then_interrupt)
    code = studies.main(
        [
            "seeds",
            "--data",
            str(small_npz),
            "--results_dir",
            str(tmp_path),
            "--seeds",
            "0,",
            "--models",
            "lenet,lenet_bn1",
            "--rules",
            "moving",
            *FAST,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 130
    assert out.startswith("study seeds: The variants over several seeds")
    assert f"data {small_npz}, 1 epochs per training run" in out
    assert "lenet: training 1 epochs on 170 images ..." in out
    assert "lenet: test accuracy" in out
    assert "lenet_bn1: training 1 epochs" in out and "lenet_bn1: test accuracy" not in out
    assert "the studies built on the grid keep the CSV of every run that finished" in err
    rows = read_csv(tmp_path / "seeds" / "seeds.csv")
    assert [(row["model"], row["seed"]) for row in rows] == [("lenet", "0")]


def test_figure1_panels_of_both_networks_share_one_y_scale(monkeypatch, tmp_path):
    import visualizations

    figures = []
    monkeypatch.setattr(visualizations, "save_figure", lambda figure, path: figures.append(figure))

    def band(values):
        return values, [v - 0.05 for v in values], [v + 0.05 for v in values]

    curve = {"step": [0, 1], "test_accuracy": band([0.1, 0.2])}
    curves = {
        "lenet": {**curve, "p15": band([-0.1, 0.0]), "p50": band([0.0, 0.1]), "p85": band([0.1, 0.2])},
        "lenet_fc_bn2": {**curve, "p15": band([-2.0, -1.5]), "p50": band([0.0, 0.1]), "p85": band([1.5, 2.0])},
    }
    visualizations.plot_figure1(curves, "F6", tmp_path / "figure1.png", "a title")
    _, lenet_axes, bn_axes = figures[0].axes
    assert all(axes.get_ylabel() for axes in figures[0].axes), "every panel labelled"
    assert lenet_axes.get_ylim() == bn_axes.get_ylim()
    assert lenet_axes.get_ylim()[0] <= -2.0 and lenet_axes.get_ylim()[1] >= 2.0


def test_replicas_trains_once_per_split_and_rule_and_global_on_two_equals_one(small_npz, tmp_path, capsys):
    out = run_study(["replicas", "--data", small_npz, "--results_dir", tmp_path, "--replicas", 1, 2, *FAST], capsys)
    assert out.count("1 replica(s) of 64 images, --bn_sync global: training") == 1
    assert out.count("1 replica(s) of 64 images, --bn_sync replica: training") == 0
    assert "2 replica(s) of 32 images, --bn_sync replica: training" in out
    rows = read_csv(tmp_path / "replicas" / "replicas.csv")
    assert [(row["replicas"], row["batch_per_replica"], row["bn_sync"]) for row in rows] == [
        ("1", "64", "global"),
        ("1", "64", "replica"),
        ("2", "32", "global"),
        ("2", "32", "replica"),
    ]
    accuracy = {(row["replicas"], row["bn_sync"]): float(row["test_accuracy"]) for row in rows}
    # Synchronized BN makes two replicas one device with the whole batch.
    assert accuracy[("2", "global")] == pytest.approx(accuracy[("1", "global")], abs=1e-3)
    assert_png(tmp_path / "replicas" / "replicas.png")
    assert json.loads((tmp_path / "replicas" / "summary.json").read_text())["global_batch"] == 64


def test_replicas_that_do_not_divide_the_batch_are_refused(small_npz, tmp_path, capsys):
    code = studies.main(["replicas", "--data", str(small_npz), "--results_dir", str(tmp_path), "--replicas", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "--replicas 3: the global batch of 64 does not split evenly" in err


def test_the_replicas_plot_of_one_seed_never_zooms_in_below_its_floor(monkeypatch, tmp_path):
    import visualizations

    figures = []
    monkeypatch.setattr(visualizations, "save_figure", lambda figure, path: figures.append(figure))
    points = {"global": [(1, 0.9681), (2, 0.9681)], "replica": [(1, 0.9681), (2, 0.9663)]}
    visualizations.plot_replicas(points, 64, tmp_path / "replicas.png")
    low, high = figures[0].axes[0].get_ylim()
    assert high - low >= visualizations.NARROWEST_ONE_SEED_SPAN and low <= 0.9663 and high >= 0.9681


def test_seeds_with_patience_stops_each_run_on_its_own_and_still_plots(small_npz, tmp_path, capsys):
    run_study(
        [
            "seeds",
            "--data",
            small_npz,
            "--results_dir",
            tmp_path,
            "--seeds",
            2,
            "--models",
            "lenet",
            "--rules",
            "moving",
            "--epochs",
            6,
            "--patience",
            1,
            "--every",
            3,
            "--jit_compile",
            0,
            "--jobs",
            1,
        ],
        capsys,
    )
    rows = read_csv(tmp_path / "seeds" / "seeds.csv")
    trained = [int(row["epochs_trained"]) for row in rows]
    assert all(2 <= epochs <= 6 for epochs in trained)
    summary = read_summary(tmp_path / "seeds")
    assert summary["rules"]["moving"]["epochs_trained"]["lenet"]["mean"] == pytest.approx(np.mean(trained))
    assert_png(tmp_path / "seeds" / "seeds_moving_accuracy.png")


def test_grid_trains_every_model_at_every_value_for_every_seed(small_npz, tmp_path, capsys):
    out = run_study(
        [
            "grid",
            "--vary",
            "batch_size=32,64",
            "--models",
            "lenet,lenet_bn1",
            "--seeds",
            2,
            "--data",
            small_npz,
            "--results_dir",
            tmp_path,
            *FAST,
        ],
        capsys,
    )
    folder = tmp_path / "grid" / "batch_size"
    rows = read_csv(folder / "grid.csv")
    assert sorted((row["model"], row["batch_size"], row["seed"]) for row in rows) == sorted(
        (model, size, seed) for model in ("lenet", "lenet_bn1") for size in ("32", "64") for seed in ("0", "1")
    )
    summary = read_summary(folder)
    for model in ("lenet", "lenet_bn1"):
        for size in ("32", "64"):
            accuracies = [
                float(row["test_accuracy"]) for row in rows if (row["model"], row["batch_size"]) == (model, size)
            ]
            assert summary["models"][model][size]["mean"] == pytest.approx(np.mean(accuracies))
            assert summary["models"][model][size]["sd"] == pytest.approx(np.std(accuracies, ddof=1))
    mine = {(row["model"], row["seed"]): float(row["test_accuracy"]) for row in rows if row["batch_size"] == "32"}
    expected = np.mean([mine["lenet_bn1", seed] - mine["lenet", seed] for seed in ("0", "1")])
    assert summary["minus_lenet"]["lenet_bn1"]["32"]["mean"] == pytest.approx(expected)
    # The batch size reached the training: 170 images at batch 32 is 6 steps an epoch, at 64 3.
    assert "batch_size 32, seed 0: lenet: training 1 epochs" in out
    assert_png(folder / "grid.png")


@pytest.mark.parametrize(
    "vary, message",
    [
        ("batch_size=0,4", "argument --vary: batch_size: expected an integer from 1 to 65536, got '0'"),
        ("seed=1,2", "argument --vary: expected KNOB=V1,V2,... with KNOB a knob of main.py"),
        ("batch_size=4 --models lenet,lenet_bx", "argument --models: 'lenet_bx' is not one of lenet, lenet_bn1"),
        ("batch_size=4 --seeds 0", "argument --seeds: expected an integer from 1 to 1000, got '0'"),
        ("batch_size=4 --models lenet,lenet", "argument --models: expected distinct models; got 'lenet,lenet'"),
        ("bn_statistics=precise,nope", "argument --vary: bn_statistics: 'nope' is not one of precise, moving"),
        ("optimizer=adam,nonesuch", "--optimizer nonesuch: not a Keras optimizer"),
    ],
)
def test_grid_refuses_a_value_main_py_would_refuse_in_one_line(vary, message, small_npz, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(utils, "load", lambda *args: pytest.fail("data loaded despite a bad value"))
    try:
        argv = ["grid", "--vary", *vary.split(" "), "--data", str(small_npz), "--results_dir", str(tmp_path)]
        code = studies.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_grid_refuses_an_output_size_below_the_datas_labels_in_one_line(small_npz, tmp_path, capsys):
    argv = ["grid", "--vary", "output_size=10,2", "--data", str(small_npz), "--results_dir", str(tmp_path)]
    code = studies.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--vary output_size=2: the data's labels run from 0 to 9; give values of at least 10" in err
    assert not (tmp_path / "grid").exists()


def test_grid_counts_a_diverged_training_as_accuracy_0_in_its_mean(small_npz, tmp_path, capsys):
    argv = ["grid", "--vary", "learning_rate=0.001,1e38", "--models", "lenet", "--seeds", 2]
    run_study([*argv, "--data", small_npz, "--results_dir", tmp_path, *FAST], capsys)
    rows = read_csv(tmp_path / "grid" / "learning_rate" / "grid.csv")
    summary = read_summary(tmp_path / "grid" / "learning_rate")["models"]["lenet"]
    assert [row["diverged"] for row in rows if float(row["learning_rate"]) == 1e38] == ["True", "True"]
    assert summary["1e+38"] == {**summary["1e+38"], "n": 2, "mean": 0.0, "diverged": 2}
    finished = [float(row["test_accuracy"]) for row in rows if float(row["learning_rate"]) == 0.001]
    assert summary["0.001"]["mean"] == pytest.approx(np.mean(finished))


def test_the_grid_plot_marks_diverged_trainings_and_uses_a_log_axis_past_a_factor_of_20(monkeypatch, tmp_path):
    import visualizations

    figures = []
    monkeypatch.setattr(visualizations, "save_figure", lambda figure, path: figures.append(figure))
    ok = {"n": 2, "mean": 0.9, "sd": 0.01, "low": 0.85, "high": 0.95, "diverged": 0}
    gone = {"n": 0, "diverged": 2}
    visualizations.plot_grid("learning_rate", [0.01, 1.0], {"lenet": [ok, gone]}, tmp_path / "grid.png", "note")
    visualizations.plot_grid("batch_size", [4, 64], {"lenet": [ok, ok]}, tmp_path / "grid.png", "note")
    wide, narrow = (figure.axes[0] for figure in figures)
    assert wide.get_xscale() == "log" and narrow.get_xscale() == "linear"  # 100x against 16x
    assert [text.get_text() for text in wide.texts] == ["2 diverged"]


def test_grid_resume_trains_only_what_an_earlier_run_did_not_finish(small_npz, tmp_path, capsys, monkeypatch):
    from study import grid

    trained = []
    real = grid.run_trainings

    def counting(config, plan, data, on_finished):
        trained.append([training.describe() for training in plan])
        return real(config, plan, data, on_finished)

    monkeypatch.setattr(grid, "run_trainings", counting)
    common = ["grid", "--models", "lenet", "--seeds", 1, "--data", small_npz, "--results_dir", tmp_path, *FAST]
    run_study([*common, "--vary", "window_size=3"], capsys)
    first = read_csv(tmp_path / "grid" / "window_size" / "grid.csv")
    run_study([*common, "--vary", "window_size=3,4", "--resume", 1], capsys)
    assert trained[1] == ["window_size 4, seed 0: lenet"]  # 3 kept
    rows = read_csv(tmp_path / "grid" / "window_size" / "grid.csv")
    assert [row for row in rows if row["window_size"] == "3"] == first  # the kept row, as it was
    assert sorted(row["window_size"] for row in rows) == ["3", "4"]
    # Other settings are other trainings: two epochs train it again.
    run_study([*common, "--vary", "window_size=3", "--resume", 1, "--epochs", 2], capsys)
    assert len(trained[2]) == 1
    # The record keeps each training's latest run, as summary.json keeps each model's.
    run_study([*common, "--vary", "window_size=3", "--resume", 1], capsys)
    assert len(trained[3]) == 1
    run_study([*common, "--vary", "window_size=3", "--resume", 1], capsys)
    assert len(trained) == 4  # kept: nothing handed to the executor
    # A damaged record, or one from an older version, is refused in one line before anything trains, as
    # main.py refuses a damaged summary.json, also without --resume (the run would update it).
    record = tmp_path / "grid" / "window_size" / "grid.trainings.json"
    for content, message in (("{not json", "is unreadable"), ('{"{}": {}}', "written by an older version")):
        record.write_text(content)
        for resume in (1, 0):
            code = studies.main([str(arg) for arg in [*common, "--vary", "window_size=3", "--resume", resume]])
            err = capsys.readouterr().err
            assert code == 2 and f"{record}" in err and message in err and len(err.strip().splitlines()) == 1, err
    assert len(trained) == 4


def test_the_batch_size_and_init_presets_are_grids_of_the_issues_settings(monkeypatch, small_npz, tmp_path, capsys):
    from study import batch_size, init

    calls = []

    def sweep(config, knob, values, lines, seeds, data, folder):
        calls.append((knob, values, [line.describe() for line in lines], seeds, config.epochs, folder.name))
        # A made-up peak at s = 0.01, 0.025 lower per decade away from it.
        per_value = {str(value): {"n": 3, "mean": 0.9 - 0.025 * abs(np.log10(value) + 2)} for value in values}
        return {"models": {line.name: per_value for line in lines}}

    monkeypatch.setattr(batch_size, "sweep", sweep)
    monkeypatch.setattr(init, "sweep", sweep)
    run_study(["batch_size", "--data", small_npz, "--results_dir", tmp_path], capsys)
    run_study(["init", "--data", small_npz, "--results_dir", tmp_path], capsys)
    (knob, sizes, lines, seeds, epochs, folder), init_call = calls
    assert (knob, sizes, seeds, epochs, folder) == (
        "batch_size",
        [2, 4, 8, 16, 32, 64, 128, 256],
        [0, 1, 2],
        3,
        "batch_size",
    )
    assert lines == ["lenet", "lenet_fc_bn2 precise", "lenet_fc_bn2 moving", "lenet_gn", "lenet_ln"]
    assert init_call[0] == "init_std" and init_call[2] == ["lenet", "lenet_fc_bn2"]
    scales = init_call[1]
    assert len(scales) >= 12 and scales[0] == 1.0 and scales[-1] == 1e-4
    assert np.allclose(np.diff(np.log10(scales)), -1 / 3, atol=0.01)  # three per decade
    # Within 0.02 of the best (0.9 at s = 0.01): 0.8 of a decade each way: 0.00215 to 0.0464 of the grid.
    near = read_summary(tmp_path / "init")["near_best"]["lenet"]
    assert (near["best_at"], near["lowest"], near["highest"], near["count"]) == (0.01, 0.00215, 0.0464, 5)
    assert near["factor"] == pytest.approx(21.6, abs=0.1)


def test_a_grid_tells_trainings_apart_by_their_validation_split():
    from study import grid

    config = make_config()
    trainings = grid.plan(config, [grid.Line("lenet")], [{"val_split": 0.1}, {"val_split": 0.2}], [0])
    record = {"data": "x.npz", "data_sha256": "0" * 64}
    assert grid.identity(trainings[0], record) != grid.identity(trainings[1], record)


def test_a_plan_whose_trainings_share_a_label_is_refused_before_anything_trains(tmp_path):
    """The record keeps one row per label: two trainings under one label would overwrite each other's."""
    from types import SimpleNamespace

    from study import grid

    config = make_config()
    trainings = grid.plan(config, [grid.Line("lenet"), grid.Line("lenet")], [{}], [0])
    data = SimpleNamespace(record={"data": "x.npz", "data_sha256": "0" * 64})
    with pytest.raises(ValueError, match="two trainings share a label: seed 0: lenet"):
        grid.train(config, trainings, data, tmp_path / "grid.csv", row_of=None, resume=1)
    assert not list(tmp_path.iterdir())
