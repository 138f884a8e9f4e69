"""--jit_compile measure: the choice between XLA and TensorFlow's kernels leaves the
model exactly as it found it, compiled for the faster path."""

import json

import numpy as np
import pytest

import models_handling
from conftest import make_config
from harness import compile_path
from lenet import INPUT_SHAPE


def settings(jit_compile, batch_size=32):
    return make_config(batch_size=batch_size, epochs=1, jit_compile=jit_compile)


def images_and_labels(count=128, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(count, *INPUT_SHAPE)).astype(np.float32), rng.integers(0, 10, count)


@pytest.fixture
def faster(monkeypatch):
    """Make one path's timed steps take 1 s and the other's 2 s (the steps do
    not run; the compiling steps still do)."""

    def force(xla_is_faster):
        monkeypatch.setattr(
            compile_path, "step_seconds", lambda model, iterator: 1.0 if model.jit_compile == xla_is_faster else 2.0
        )

    return force


@pytest.mark.parametrize("xla_is_faster", [True, False], ids=["XLA faster", "TensorFlow faster"])
def test_the_chosen_path_trains_exactly_as_a_run_fixed_to_it(xla_is_faster, faster):
    faster(xla_is_faster)
    images, labels = images_and_labels()
    model = models_handling.build_and_compile("lenet_bn2", settings("measure"))
    start = [weight.copy() for weight in model.get_weights()]

    choice = compile_path.choose_jit_compile(model, models_handling.timing_batches(images, labels, 32))

    assert choice.jit_compile is xla_is_faster and model.jit_compile is xla_is_faster
    assert choice.ms_per_step == (
        {"xla": 1000.0, "tensorflow": 2000.0} if xla_is_faster else {"xla": 2000.0, "tensorflow": 1000.0}
    )
    assert choice.seconds > sum(choice.compile_seconds.values()) > 0
    for got, expected in zip(model.get_weights(), start):  # the compiling steps are undone, BN windows included
        np.testing.assert_array_equal(got, expected)
    assert int(model.optimizer.iterations.numpy()) == 0

    fixed = models_handling.build_and_compile("lenet_bn2", settings(int(xla_is_faster)))
    histories = [
        models_handling.fit(network, images, labels, settings(int(xla_is_faster)), epochs=2).history
        for network in (model, fixed)
    ]
    assert set(histories[0]) == set(histories[1])
    for key, values in histories[0].items():  # per key: pytest 9's approx refuses a dict of lists
        np.testing.assert_allclose(values, histories[1][key], rtol=1e-6, atol=1e-7, err_msg=key)
    for got, expected in zip(model.get_weights(), fixed.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_fit_chooses_once_prints_the_choice_and_keeps_it(capsys):
    images, labels = images_and_labels()
    model = models_handling.build_and_compile("lenet", settings("measure"))
    models_handling.fit(model, images, labels, settings("measure"), epochs=1)
    first = model.jit_choice
    out = capsys.readouterr().out
    assert f"lenet: {first.path()} (" in out and "ms per training step) over" in out
    assert set(first.ms_per_step) == {"xla", "tensorflow"} and min(first.ms_per_step.values()) > 0
    models_handling.fit(model, images, labels, settings("measure"), epochs=1)
    assert model.jit_choice is first and "per training step" not in capsys.readouterr().out


def test_timing_batches_are_full_training_batches():
    images, labels = images_and_labels(count=300)
    sizes = [len(batch_labels) for _, batch_labels in models_handling.timing_batches(images, labels, 64)]
    assert sizes == [64] * 4  # 300 images hold four full batches of 64, fewer than STEPS
    few = [len(y) for _, y in models_handling.timing_batches(images[:10], labels[:10], 64)]
    assert few == [10]  # not one full batch: what there is


def test_a_new_model_on_this_machine_reuses_the_remembered_choice_without_timing(capsys, monkeypatch):
    images, labels = images_and_labels()
    first = models_handling.build_and_compile("lenet", settings("measure"))
    models_handling.fit(first, images, labels, settings("measure"), epochs=1)
    chosen = first.jit_choice
    assert not chosen.remembered and compile_path.record_path().exists()
    capsys.readouterr()
    choose = compile_path.choose_jit_compile
    monkeypatch.setattr(compile_path, "choose_jit_compile", lambda *args: pytest.fail("timed again"))
    second = models_handling.build_and_compile("lenet", settings("measure"))
    models_handling.fit(second, images, labels, settings("measure"), epochs=1)
    assert second.jit_choice.remembered and second.jit_compile == chosen.jit_compile
    assert second.jit_choice.record() == {**chosen.record(), "remembered": True}  # what it cost then
    assert "as chosen on this machine before (choosing cost" in capsys.readouterr().out
    # Another batch size is another question: it is timed.
    monkeypatch.setattr(compile_path, "choose_jit_compile", choose)
    third = models_handling.build_and_compile("lenet", settings("measure", batch_size=16))
    models_handling.fit(third, images, labels, settings("measure", batch_size=16), epochs=1)
    assert not third.jit_choice.remembered


@pytest.mark.parametrize(
    "content", ["{not json", '{"version": 1, "choices": {"k": {"xla": true}}}', '{"version": 99, "choices": {}}', "[]"]
)
def test_a_damaged_or_foreign_record_is_ignored_and_rewritten(content):
    path = compile_path.record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    assert compile_path.remembered_choice("k") is None
    choice = compile_path.JitChoice(True, {"xla": 1.0, "tensorflow": 2.0}, {"xla": 3.0, "tensorflow": 1.0}, 5.0)
    assert compile_path.remember("k", choice)
    assert compile_path.remembered_choice("k") == compile_path.JitChoice(
        True, {"xla": 1.0, "tensorflow": 2.0}, {"xla": 3.0, "tensorflow": 1.0}, 5.0, remembered=True
    )


def test_a_record_that_cannot_be_written_is_not_fatal(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("KERAS_HOME", str(blocker))  # a file where the folder should be
    choice = compile_path.JitChoice(False, {"xla": 2.0, "tensorflow": 1.0}, {"xla": 3.0, "tensorflow": 1.0}, 5.0)
    assert compile_path.remember("k", choice) is False
    assert compile_path.remembered_choice("k") is None


def test_the_key_names_what_decides_the_path():
    key = json.loads(compile_path.choice_key("lenet_bn2", settings("measure"), threads=2, steps_per_call=32))
    assert set(key) == {"cpu", "tensorflow", "keras", "model", "threads", "batch_size", "precision", "devices"} | {
        "bn_placement",
        "output_size",
        "steps_per_call",
    }
    assert key["cpu"] and key["model"] == "lenet_bn2" and key["threads"] == 2


def test_auto_is_a_rule_xla_on_a_gpu_and_tensorflows_kernels_on_a_cpu(monkeypatch):
    """No timing and nothing remembered: the same path on every run of a machine."""
    import tensorflow as tf

    config = make_config(jit_compile="auto")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    assert models_handling.jit_compile_for(config) is False
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    assert models_handling.jit_compile_for(config) is True
    assert models_handling.jit_compile_for(make_config(jit_compile=1)) is True
    assert models_handling.jit_compile_for(make_config(jit_compile="measure")) is False  # until fit has timed both
