"""The sweep that `python main.py` runs, once its flags are parsed: train every
model it names through the executor, write each one's results as it
finishes, and print the table.

    check the input (results folder, data, optimizer, devices) -> claim each
    model for the results folder (or skip it: --resume, or a run beside this
    one finished it) -> executor.run -> write each -> the table
"""

import contextlib
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import keras

import utils
from common import files
from common.config import VARIANTS, describe
from harness import results_folder
from harness.executor import Executor, Training
from models_handling import make_optimizer
from training import devices


class CtrlC:
    """Ctrl-C that is never lost, as a context around the run.

    Python raises KeyboardInterrupt wherever the main thread is when the
    signal arrives. Inside a garbage-collection callback (TensorFlow and Keras
    have many) it is printed as "Exception ignored" with a traceback and
    dropped, and the run went on to the end (1 Ctrl-C in 25 in a test). Here
    the handler also records the request, `check` raises it again at the next
    training step or model, and the dropped one is not printed.
    """

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous_handler = signal.signal(signal.SIGINT, self.handler)
        self.previous_hook = sys.unraisablehook
        sys.unraisablehook = self.unraisable
        return self

    def __exit__(self, *exception):
        signal.signal(signal.SIGINT, self.previous_handler)
        sys.unraisablehook = self.previous_hook

    def handler(self, signum, frame):
        self.requested = True
        raise KeyboardInterrupt

    def unraisable(self, unraisable):
        if not issubclass(unraisable.exc_type, KeyboardInterrupt):  # ours: `check` raises it again
            self.previous_hook(unraisable)

    def check(self):
        if self.requested:
            raise KeyboardInterrupt

    def callback(self):
        """A Keras callback that checks after every training step."""
        return keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: self.check())


def main(config, prog):
    """Run the sweep of `config`: its exit status, with a one-line error for bad input."""
    finished = []
    with CtrlC() as ctrl_c:
        try:
            return run(config, ctrl_c, finished)
        except utils.UsageError as error:
            print(f"{prog}: error: {error}", file=sys.stderr)
            return 2
        except files.WriteError as error:  # a full disk: the models finished before it keep their files
            print(f"{prog}: error: {error}", file=sys.stderr)
            return 1
        except Exception:
            if not ctrl_c.requested:
                raise
            return interrupted(config, finished)  # Ctrl-C broke a library off mid-operation; it failed later
        except KeyboardInterrupt:
            return interrupted(config, finished)


def check_results_dir(results_dir):
    """Fail before loading data if results cannot be written there."""
    path = Path(results_dir)
    existing = next((parent for parent in (path, *path.parents) if parent.exists()), Path("."))
    if not existing.is_dir():
        raise utils.UsageError(f"--results_dir {path}: {existing} is a file; name a folder")
    if not os.access(existing, os.W_OK):
        raise utils.UsageError(f"--results_dir {path}: {existing} is not writable; name another folder")
    results_folder.read_summary(path)  # raises if an existing summary cannot be updated


def run(config, ctrl_c, finished):
    """Check everything a run needs, then train, write and tabulate; appends
    each finished model's result to `finished`. The exit status."""
    names = list(VARIANTS) if config.model == "all" else [config.model]
    check_results_dir(config.results_dir)
    executor = Executor(config.jobs, config.cluster, len(names))
    if not executor.in_process:
        refuse_in_workers(config, executor)
    # Before anything runs on TensorFlow, which then starts its devices.
    strategy = devices.make_strategy(config.devices, config.batch_size)
    data = utils.load(config)
    train, val = utils.split_train_val(len(data.y_train), config.val_split, config.seed)  # refuses an empty set
    make_optimizer(config.optimizer, config.learning_rate)  # rejects a bad name now
    if strategy.num_replicas_in_sync > 1 and config.jit_compile:
        print(
            f"{strategy.num_replicas_in_sync} replicas: XLA off (as --jit_compile 0), since XLA cannot compile "
            "a step whose variables lie on several devices"
        )
        config = replace(config, jit_compile=False)
    run_record = {
        **data.record,
        "val_split": config.val_split,
        "images": {"train": len(train), "val": len(val), "test": len(data.y_test)},
    }
    # The workers start (or the cluster is reached and its versions checked)
    # before anything is written.
    with executor:
        files.make_writable_folder(config.results_dir, "--results_dir")
        print(
            f"data: {config.data or data.record['data']}: {len(train)} training, {len(val)} validation, "
            f"{len(data.y_test)} test images; results in {config.results_dir}/"
        )
        with strategy.scope():  # the models' variables are made on every replica's device
            sweep(names, data, config, run_record, executor, ctrl_c, finished)
    # Columns stay apart at any magnitude: a space between them, losses in %g.
    print(f"\n{'model':<15} {'test accuracy':>13} {'test loss':>10} {'seconds':>8}")
    for result in finished:
        accuracy, loss = (
            ("diverged", "") if result.diverged else (f"{result.test_accuracy:.4f}", f"{result.test_loss:.4g}")
        )
        print(f"{result.name:<15} {accuracy:>13} {loss:>10} {result.train_seconds:>8.1f}")
    return 1 if any(result.diverged for result in finished) else 0


def sweep(names, data, config, run_record, executor, ctrl_c, finished):
    """Every model of `names` not finished already (--resume) or meanwhile
    (by a run beside this one, which is waited for), trained by `executor`
    and written here as it finishes; `finished` in the order of `names`.

    In this process each model backs up every finished epoch, and resumes
    from it under --resume; trainings in workers keep no backup: --resume
    afterwards skips the finished models and trains the rest afresh."""
    identity = results_folder.run_identity(config.training_settings(), run_record)
    earlier = results_folder.read_summary(config.results_dir) if config.resume else {}
    results_dir = Path(config.results_dir)
    plan = []
    with contextlib.ExitStack() as claims:
        for name in names:
            if results_folder.same_run(earlier.get(name), identity):
                print(f"{name}: finished earlier with the same settings and data; skipped (--resume)")
                finished.append(results_folder.result_from_summary(results_dir, name, earlier[name]))
                continue
            done_meanwhile = claims.enter_context(claimed(name, identity, config))
            if done_meanwhile is not None:
                finished.append(results_folder.result_from_summary(results_dir, name, done_meanwhile))
                continue
            plan.append(
                Training(
                    name,
                    config,
                    backup_dir=str(results_dir / results_folder.BACKUP_FOLDER / name) if executor.in_process else None,
                    identity=identity,
                    log_dir=str(results_dir / "logs" / name) if config.tensorboard else None,
                )
            )
        if plan:
            print(
                f"\ntraining {executor.describe()}: " + "; ".join(describe(training.name) for training in plan),
                flush=True,
            )

        def write(index, result):
            # Kept the moment summary.json holds it: a Ctrl-C during the
            # comparison plots or the report still counts it as kept.
            results_folder.save_results(result, config, run_record, recorded=lambda: finished.append(result))
            if plan[index].backup_dir:
                results_folder.remove_backup(plan[index].backup_dir)
            report(result, config)

        executor.run(plan, data, write, local_callbacks=[ctrl_c.callback()])
    order = {name: index for index, name in enumerate(names)}
    finished.sort(key=lambda result: order[result.name])


@contextlib.contextmanager
def claimed(name, identity, config):
    """Hold `name`'s training lock for the results folder while the block
    runs. If another run held it, this waited for it, and yields that run's
    summary.json entry when it finished the model with the same settings and
    data (the model is then skipped); else yields None."""

    def busy(pid):
        other = f"another run (process {pid})" if pid else "another run"
        print(f"\n{name}: {other} is training it into {config.results_dir}/; waiting for it", flush=True)

    with files.file_lock(Path(config.results_dir) / f"{name}.training", on_busy=busy) as waited:
        entry = results_folder.read_summary(config.results_dir).get(name) if waited else None
        if results_folder.same_run(entry, identity):
            print(f"{name}: finished meanwhile by the other run with the same settings and data; skipped")
            yield entry
        else:
            yield None


def refuse_in_workers(config, executor):
    """What a worker cannot do, refused before anything is loaded."""
    flag = f"--cluster {executor.address}" if executor.address else f"--jobs {executor.jobs}"
    if config.devices > 1:
        raise utils.UsageError(
            f"--devices {config.devices} splits one model's batch over this process's devices, and {flag} trains "
            "each model in a worker process of its own: use --jobs 1 with --devices"
        )
    if config.tensorboard:
        raise utils.UsageError(
            f"--tensorboard 1 writes its logs from inside the training, and with {flag} the trainings run in "
            "worker processes while only this one writes the results: use --jobs 1 with --tensorboard 1"
        )


def report(result, config):
    """A finished model's line: its test figures, or where it diverged and what to try."""
    if result.diverged:
        rate = f"{config.learning_rate:g}" if config.learning_rate is not None else "the optimizer's default"
        print(
            f"{result.name}: {results_folder.outcome(result)} (loss {result.diverged['loss']}); stopped there; "
            f"try a lower --learning_rate than {rate}",
            file=sys.stderr,
        )
    else:
        print(f"{result.name}: {results_folder.outcome(result)} ({result.train_seconds:.1f} s of training)", flush=True)


def interrupted(config, finished):
    if finished:
        names = ", ".join(result.name for result in finished)
        print(
            f"\ninterrupted: the models that finished ({names}) have their results in {config.results_dir}/",
            file=sys.stderr,
        )
    else:
        print("\ninterrupted before any model finished: no results were written", file=sys.stderr)
    return 130
