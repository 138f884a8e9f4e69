"""Train and evaluate LeNet-5 with and without batch normalization on MNIST.

    python main.py --model lenet_bn2
    python main.py --model all --data mnist.npz

Edit a default in DEFAULTS below; any flag overrides it (python main.py --help).
"""

DEFAULTS = {
    "model": "all",  # one of lenet.VARIANTS, lenet_keras_bn, or "all" (the five variants)
    "batch_size": 64,
    "output_size": 10,
    "epochs": 10,
    "optimizer": "adam",
    "learning_rate": None,  # None: the optimizer's own default (0.001 for adam)
    "epsilon": 1e-8,
    "window_size": 5,
    "bn_statistics": "precise",  # precise: window refilled with the trained weights each epoch; moving: last steps
    "precision": "float32",  # or mixed_float16 (GPUs with tensor cores), mixed_bfloat16
    "devices": 1,  # N: the global batch split across N GPUs (or N logical CPU devices)
    "bn_sync": "global",  # several devices: BN with the global batch's statistics, or "replica": each shard's own
    "verbose": 1,
    "flag_visualizations": 1,
    "tensorboard": 0,  # 1: TensorBoard logs under <results_dir>/logs/<model>/
    "resume": 0,  # 1: skip models already finished with these settings and data; continue interrupted ones
    "jit_compile": "auto",  # auto: per model, the faster of XLA (1) and TensorFlow's own kernels (0), timed
    "inference_batch_size": 1024,  # validation and test (BN's inference uses no batch statistics)
    "jobs": "auto",  # trainings side by side: auto, the machine's cores (at most one per model); 1: this process
    "cluster": None,  # a Dask scheduler's address (tcp://HOST:8786): the trainings run on its workers
    "seed": 0,
    "val_split": 0.15,
    "data": None,  # None: download with Keras; else a .npz or a folder of IDX files
    "dataset": "mnist",
    "results_dir": "results",
}

import argparse  # noqa: E402  (DEFAULTS stays the first thing a reader sees)
import contextlib  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

if __name__ == "__main__":
    # Ctrl-C while TensorFlow loads: nothing to keep, so leave at once. (A
    # KeyboardInterrupt could be swallowed by a library's import code.)
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))

import utils  # noqa: E402

utils.import_tensorflow_quietly()  # before the modules below import it

import keras  # noqa: E402

import distribution  # noqa: E402
import files  # noqa: E402
import models_handling  # noqa: E402
import results_folder  # noqa: E402
import training_callbacks  # noqa: E402
import trainings  # noqa: E402
from command_line import (  # noqa: E402
    LIMITS,
    OneLineErrorParser,
    auto_or_int_up_to,
    auto_or_switch,
    float_up_to,
    float_up_to_or_none,
    fraction,
    int_up_to,
)
from lenet import MODEL_NAMES, VARIANTS, describe  # noqa: E402

# ---------------------------------------------------------------- arguments


def build_parser():
    parser = OneLineErrorParser(
        prog="main.py",
        description="Train LeNet-5 variants with and without batch normalization on MNIST; "
        "write their histories, plots and test results to --results_dir.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--model", choices=[*MODEL_NAMES, "all"], metavar="NAME",
        help="; ".join(describe(name) for name in MODEL_NAMES) + "; all: the five variants in turn")
    add("--batch_size", type=int_up_to(LIMITS["batch_size"]),
        help=f"mini-batch size for training and for the precise refill (1 to {LIMITS['batch_size']})")
    add("--output_size", type=int_up_to(LIMITS["output_size"]),
        help=f"number of classes (units of the output layer; 1 to {LIMITS['output_size']})")
    add("--epochs", type=int_up_to(LIMITS["epochs"]), help=f"passes over the training split (1 to {LIMITS['epochs']})")
    add("--optimizer", help="Keras optimizer name (adam, sgd, rmsprop, ...)")
    add("--learning_rate", type=float_up_to_or_none(LIMITS["learning_rate"]),
        help=f"optimizer learning rate, up to {LIMITS['learning_rate']:g}; None: the optimizer's own default "
        "(0.001 for adam)")
    add("--epsilon", type=float_up_to(LIMITS["epsilon"]),
        help="BN's epsilon, added to the variance before the square root so that a "
        f"channel with (near) zero variance does not divide by zero (up to {LIMITS['epsilon']:g})")
    add("--window_size", type=int_up_to(LIMITS["window_size"]),
        help="BN at inference normalizes with the average mean and variance of this many "
        f"training mini-batches (which ones: --bn_statistics; 1 to {LIMITS['window_size']})")
    add("--bn_statistics", choices=models_handling.BN_STATISTICS,
        help="what fills BN's inference window: precise refills it at every epoch's end, before "
        "validation, from window_size training batches passed through the trained, frozen weights "
        "(the paper's Algorithm 2); moving keeps the statistics of the last window_size training "
        "steps, taken while the weights were still changing")
    add("--precision", choices=models_handling.PRECISIONS,
        help="Keras dtype policy: float32, or float16 / bfloat16 arithmetic with float32 weights "
        "(faster on GPUs with tensor cores and CPUs with bfloat16 units; BN's statistics stay float32)")
    add("--devices", type=int_up_to(LIMITS["devices"]),
        help="train on this many devices with tf.distribute.MirroredStrategy, batch_size staying the global "
        "batch, split evenly: the GPUs where the machine has that many, else logical CPU devices sharing the "
        f"cores (1 to {LIMITS['devices']})")
    add("--bn_sync", choices=models_handling.BN_SYNC,
        help="with several devices, BN normalizes each device's shard of the batch with the global batch's "
        "statistics (global: summed across devices, as Keras's synchronized=True) or with the shard's own "
        "(replica; the window then records their average). One device: no difference")
    add("--verbose", type=int, choices=[0, 1, 2],
        help="Keras training output: 0 silent, 1 progress bar, 2 one line per epoch")
    add("--flag_visualizations", type=int, choices=[0, 1], help="1: write the PNG plots; 0: skip them")
    add("--tensorboard", type=int, choices=[0, 1],
        help="1: write TensorBoard logs (per-epoch scalars, BN statistics histograms) under "
        "RESULTS_DIR/logs/MODEL/; view them with tensorboard --logdir RESULTS_DIR/logs")
    add("--resume", type=int, choices=[0, 1],
        help="1: rerun a sweep without redoing work: a model whose summary.json entry has the same settings "
        "and data is skipped, and a model interrupted mid-training continues from its last finished epoch "
        "(backed up under RESULTS_DIR/backup/MODEL/ until it finishes); 0: train every model afresh")
    add("--jit_compile", type=auto_or_switch,
        help="1: compile each training and inference step with XLA; 0: run TensorFlow's own kernels; auto: "
        "time a few training steps both ways at each model's start and keep the faster (which one depends on "
        "the machine). Results differ only by float rounding")
    add("--inference_batch_size", type=int_up_to(LIMITS["batch_size"]),
        help="batch size for validation and test: larger is faster, and at inference BN uses its window, "
        f"never the batch, so results change only by float rounding (1 to {LIMITS['batch_size']})")
    add("--jobs", type=auto_or_int_up_to(LIMITS["jobs"]),
        help="how many models train at once, each in its own worker process of a local Dask cluster (a "
        "training uses one core: TensorFlow's kernels get nothing from more on LeNet); auto: the machine's "
        f"cores, at most one per model; 1: one after the other in this process (1 to {LIMITS['jobs']})")
    add("--cluster", help="the address of a running Dask scheduler (tcp://HOST:8786; default: "
        "$DASK_SCHEDULER_ADDRESS if set): the models train on its workers, this process writes the results")
    add("--seed", type=int_up_to(LIMITS["seed"], low=0),
        help=f"fixes the train/validation split, the initial weights and the shuffling (0 to {LIMITS['seed']})")
    add("--val_split", type=fraction, help="fraction of the training set held out for validation")
    add("--data", help="a Keras-format .npz (x_train, y_train, x_test, y_test) or a folder with "
        "the four MNIST IDX files (raw or .gz); None: download --dataset with Keras")
    add("--dataset", choices=["mnist", "fashion_mnist"], help="what Keras downloads when --data is None")
    add("--results_dir", help="where histories, plots and summary.json are written")
    parser.set_defaults(**DEFAULTS)
    return parser


# ---------------------------------------------------------------- Ctrl-C


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


# ---------------------------------------------------------------- the run


def check_results_dir(results_dir):
    """Fail before loading data if results cannot be written there."""
    path = Path(results_dir)
    existing = next((parent for parent in (path, *path.parents) if parent.exists()), Path("."))
    if not existing.is_dir():
        raise utils.UsageError(f"--results_dir {path}: {existing} is a file; name a folder")
    if not os.access(existing, os.W_OK):
        raise utils.UsageError(f"--results_dir {path}: {existing} is not writable; name another folder")
    results_folder.read_summary(path)  # raises if an existing summary cannot be updated


def run(args, ctrl_c, finished):
    names = list(VARIANTS) if args.model == "all" else [args.model]
    if args.data is not None and args.dataset != DEFAULTS["dataset"]:
        raise utils.UsageError(
            f"--dataset {args.dataset} names what Keras downloads, but --data {args.data} is given: "
            "drop one of the two"
        )
    check_results_dir(args.results_dir)
    executor = trainings.Executor(args.jobs, args.cluster, len(names))
    if not executor.in_process:
        refuse_in_workers(args, executor)
    # Before anything runs on TensorFlow, which then starts its devices.
    strategy = distribution.make_strategy(args.devices, args.batch_size)
    raw = utils.load_raw(args.data, args.dataset)
    utils.check_raw(*raw, num_classes=args.output_size)
    splits = utils.prepare(*raw, val_split=args.val_split, seed=args.seed)
    models_handling.make_optimizer(args.optimizer, args.learning_rate)  # rejects a bad name now
    # The workers start (or the cluster is reached and its versions checked)
    # before anything is written.
    with executor:
        return sweep(names, raw, splits, args, ctrl_c, finished, executor, strategy)


def sweep(names, raw, splits, args, ctrl_c, finished, executor, strategy):
    """The run once its input is checked and its workers, if any, are ready:
    train every model, write each, print the table."""
    if strategy.num_replicas_in_sync > 1 and args.jit_compile:
        print(f"{strategy.num_replicas_in_sync} replicas: XLA off (as --jit_compile 0), since XLA cannot compile "
              "a step whose variables lie on several devices")
        args.jit_compile = 0
    files.make_writable_folder(args.results_dir, "--results_dir")
    settings = models_handling.Settings.from_mapping(vars(args))
    run_record = {
        **utils.data_record(args.data, args.dataset),
        "val_split": args.val_split,
        "images": {"train": len(splits.y_train), "val": len(splits.y_val), "test": len(splits.y_test)},
    }
    print(
        f"data: {args.data or run_record['data']}: {len(splits.y_train)} training, {len(splits.y_val)} validation, "
        f"{len(splits.y_test)} test images; results in {args.results_dir}/"
    )

    identity = results_folder.run_identity(asdict(settings), run_record)
    earlier = results_folder.read_summary(args.results_dir) if args.resume else {}
    if executor.in_process:
        for name in names:
            ctrl_c.check()
            with strategy.scope():  # the model's variables are made on every replica's device
                result = train_one(name, splits, settings, run_record, identity, earlier.get(name), args, ctrl_c)
            finished.append(result)
    else:
        data = trainings.RawData.of(raw, run_record)
        train_side_by_side(names, data, settings, run_record, identity, earlier, args, executor, finished)

    # Columns stay apart at any magnitude: a space between them, losses in %g.
    print(f"\n{'model':<15} {'test accuracy':>13} {'test loss':>10} {'seconds':>8}")
    for result in finished:
        accuracy, loss = ("diverged", "") if result.diverged else (f"{result.test_accuracy:.4f}",
                                                                    f"{result.test_loss:.4g}")
        print(f"{result.name:<15} {accuracy:>13} {loss:>10} {result.train_seconds:>8.1f}")
    return 1 if any(result.diverged for result in finished) else 0


def train_one(name, splits, settings, run_record, identity, earlier_entry, args, ctrl_c):
    """One model of the sweep: skipped when --resume finds it finished with
    the same settings and data, else trained (or continued from its backup),
    tested and written. Its result.

    While it trains no other run trains it into the same folder (a double
    start): if one does, this waits for it, then skips the model where that
    run finished it with the same settings and data."""
    if same_run(earlier_entry, identity):
        print(f"\n== {describe(name)}: finished earlier with the same settings and data; skipped (--resume)")
        return results_folder.result_from_summary(args.results_dir, name, earlier_entry)

    with claimed(name, identity, args) as done_meanwhile:
        if done_meanwhile is not None:
            return results_folder.result_from_summary(args.results_dir, name, done_meanwhile)
        return train_and_write(name, splits, settings, run_record, identity, args, ctrl_c)


@contextlib.contextmanager
def claimed(name, identity, args):
    """Hold `name`'s training lock for the results folder while the block
    runs. If another run held it, this waited for it, and yields that run's
    summary.json entry when it finished the model with the same settings and
    data (the model is then skipped); else yields None."""
    with files.file_lock(Path(args.results_dir) / f"{name}.training",
                         on_busy=lambda pid: busy(name, pid, args)) as waited:
        entry = results_folder.read_summary(args.results_dir).get(name) if waited else None
        if same_run(entry, identity):
            print(f"{name}: finished meanwhile by the other run with the same settings and data; skipped")
            yield entry
        else:
            yield None


def same_run(entry, identity):
    """Whether a summary.json entry was trained with these settings and data."""
    return entry is not None and results_folder.run_identity(entry.get("settings", {}), entry) == identity


def train_and_write(name, splits, settings, run_record, identity, args, ctrl_c):
    print(f"\n== {describe(name)}")
    callbacks = [ctrl_c.callback()]
    if args.tensorboard:
        callbacks += training_callbacks.tensorboard_callbacks(Path(args.results_dir) / "logs" / name)
    backup = training_callbacks.ResumableTraining(
        Path(args.results_dir) / results_folder.BACKUP_FOLDER / name, identity, args.resume)
    result = models_handling.run_model(name, splits, settings, callbacks=callbacks, backup=backup)
    result.where = trainings.this_process({"jobs": 1, "threads": trainings.threads_now()})
    results_folder.save_results(result, args.results_dir, settings, run_record, args.flag_visualizations)
    backup.remove()
    report(result, args)
    return result


def refuse_in_workers(args, executor):
    """What a worker cannot do, refused before anything is loaded."""
    where = f"--cluster {executor.address}" if executor.address else f"--jobs {executor.jobs}"
    if args.devices > 1:
        raise utils.UsageError(
            f"--devices {args.devices} splits one model's batch over this process's devices, and {where} trains "
            "each model in a worker process of its own: use --jobs 1 with --devices")
    if args.tensorboard:
        raise utils.UsageError(
            f"--tensorboard 1 writes its logs from inside the training, and with {where} the trainings run in "
            "worker processes while only this one writes the results: use --jobs 1 with --tensorboard 1")


def train_side_by_side(names, data, settings, run_record, identity, earlier, args, executor, finished):
    """The sweep's models in the executor's workers, `executor.jobs` at a time
    (or on a cluster's workers), each written here as it finishes.

    Each model is claimed for this folder first (a run training it into the
    same folder is waited for, as train_one does). Trainings in workers keep
    no per-epoch backup: --resume afterwards skips the finished models and
    trains the rest afresh."""
    to_train = []
    with contextlib.ExitStack() as claims:
        for name in names:
            if same_run(earlier.get(name), identity):
                print(f"{name}: finished earlier with the same settings and data; skipped (--resume)")
                finished.append(results_folder.result_from_summary(args.results_dir, name, earlier[name]))
                continue
            done_meanwhile = claims.enter_context(claimed(name, identity, args))
            if done_meanwhile is not None:
                finished.append(results_folder.result_from_summary(args.results_dir, name, done_meanwhile))
                continue
            to_train.append(name)
        if not to_train:
            return
        print(f"training {', '.join(to_train)} {executor.describe()}; a line per finished epoch", flush=True)

        def write(index, done):
            result = done.result
            result.model_file, result.where = done.model_file, done.where
            results_folder.save_results(result, args.results_dir, settings, run_record, args.flag_visualizations)
            report(result, args)
            finished.append(result)

        executor.run([trainings.Training(name, settings, args.val_split, args.seed) for name in to_train], data,
                     write)
    order = {name: index for index, name in enumerate(names)}
    finished.sort(key=lambda result: order[result.name])


def busy(name, pid, args):
    other = f"another run (process {pid})" if pid else "another run"
    print(f"\n{name}: {other} is training it into {args.results_dir}/; waiting for it", flush=True)


def report(result, args):
    """A finished model's line: its test figures, or where it diverged."""
    name = result.name
    if result.diverged:
        where = result.diverged
        rate = f"{args.learning_rate:g}" if args.learning_rate is not None else "the optimizer's default"
        print(f"{name}: diverged at epoch {where['epoch']}, step {where['step']} (loss {where['loss']}); "
              f"stopped there; try a lower --learning_rate than {rate}", file=sys.stderr)
    else:
        print(
            f"{name}: test accuracy {result.test_accuracy:.4f}, test loss {result.test_loss:.4g} "
            f"({result.train_seconds:.1f} s of training)", flush=True
        )


def interrupted(args, finished):
    if finished:
        names = ", ".join(result.name for result in finished)
        print(f"\ninterrupted: the models that finished ({names}) have their results in {args.results_dir}/",
              file=sys.stderr)
    else:
        print("\ninterrupted before any model finished: no results were written", file=sys.stderr)
    return 130


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    finished = []
    with CtrlC() as ctrl_c:
        try:
            status = run(args, ctrl_c, finished)
        except utils.UsageError as error:
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            return 2
        except Exception:
            if not ctrl_c.requested:
                raise
            return interrupted(args, finished)  # Ctrl-C broke a library off mid-operation; it failed later
        except KeyboardInterrupt:
            return interrupted(args, finished)
    return status


if __name__ == "__main__":
    sys.exit(main())
