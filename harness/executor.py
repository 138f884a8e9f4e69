"""Where trainings run, the one executor of every command: a list of
independent trainings, each one model's models_handling.run_model, run in
this process (`jobs` 1), side by side in a
local Dask cluster of worker processes (`jobs` N), or on the workers of an
existing Dask cluster (`cluster` ADDRESS); their results come back in the
order given, whatever order they finish in.

Why side by side: TensorFlow's kernels get nothing from a second thread on
LeNet's small ops, so one training uses one core; N trainings at once use N.
Why not one training across machines: Keras's fit cannot run under
MultiWorkerMirroredStrategy (keras-team/keras#20585), and one LeNet trains in
a minute or two; what outgrows a machine is the number of trainings.

The data travels with the work: the raw uint8 arrays (utils.RawData) go to
the workers once, as a task's input, and they split and preprocess them as
utils.prepare does, so workers need no shared folder. The trained model comes
back as .keras bytes; only the caller writes files.
"""

import contextlib
import logging
import os
import socket
import tempfile
import threading
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import utils

# Quietly, before Keras: a worker process imports this module first (to run
# its tasks), and TensorFlow's C++ start-up lines would reach the terminal.
utils.import_tensorflow_quietly()

import keras

import models_handling
from common.config import VARIANTS
from harness.cluster import PATH_MODULE, PROJECT_ARCHIVE, check_address, cluster_address, connect, project_archive
from training import callbacks
from training.devices import cores, threads_now


@dataclass(frozen=True)
class Training:
    """One model's training: what run_model needs, and how to report it.
    Its split, initial weights and order of images come from config.seed."""

    name: str  # a MODEL_NAMES name
    config: object  # a Config (main.py)
    label: str = ""  # how progress lines name it; the model's name by default
    build: object = None  # a picklable callable config -> compiled model, instead of build_and_compile(name)
    callback: object = None  # a picklable callable (splits, config) -> a Keras callback with report()
    # A study's grid (study/grid.py plan): the line of its plot and the point
    # on its axis (a dict of settings) this training belongs to.
    line: str = ""
    point: dict | None = None
    # In this process only: back up every finished epoch here, and continue
    # from a backup of the same `identity` (results_folder.run_identity) when
    # config.resume; and write TensorBoard logs into log_dir.
    backup_dir: str | None = None
    identity: dict | None = None
    log_dir: str | None = None

    def describe(self):
        return self.label or self.name


# ---------------------------------------------------------------- one training, wherever it runs

_PREPARED = {}  # this process's last prepared splits, by (data key, val_split, seed)
_ONE_AT_A_TIME = threading.Lock()  # Keras's seed and dtype policy are global: one training per process


class EpochLines(keras.callbacks.Callback):
    """Each finished epoch in one line, through `say` (print here; from a
    Dask worker, a line on the driver's terminal)."""

    def __init__(self, label, epochs, say):
        super().__init__()
        self.label, self.epochs, self.say = label, epochs, say

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        text = f"{self.label} epoch {epoch + 1}/{self.epochs}: loss {logs.get('loss', float('nan')):.4g}"
        if "val_accuracy" in logs:
            text += f", val_accuracy {logs['val_accuracy']:.4f}"
        self.say(text)


def run_training(training, data, placement, say=None, extra_callbacks=()):
    """Train and test one Training on `data` (a utils.RawData) in this
    process. `say` None: here, with Keras's own output at config.verbose;
    else from a worker, which sends a line per epoch through `say` and packs
    the model as .keras bytes."""
    config = training.config
    key = (data.key, config.val_split, config.seed)
    with _ONE_AT_A_TIME:
        if key not in _PREPARED:
            _PREPARED.clear()
            _PREPARED[key] = data.splits(config.val_split, config.seed)
        splits = _PREPARED[key]
        in_worker = say is not None
        if in_worker:
            config = replace(config, verbose=0)  # the epoch lines replace Keras's progress bar
        (say or print)(
            f"{training.describe()}: training {config.epochs} epochs on {len(splits.y_train)} images ...",
            **({} if in_worker else {"flush": True}),
        )
        extra = [*extra_callbacks]
        if in_worker:
            extra.append(EpochLines(training.describe(), config.epochs, say))
        if training.log_dir:
            extra += callbacks.tensorboard_callbacks(training.log_dir)
        probe = training.callback(splits, config) if training.callback else None
        if probe:
            extra.append(probe)
        backup = (
            callbacks.ResumableTraining(training.backup_dir, training.identity, config.resume)
            if training.backup_dir
            else None
        )
        model = training.build(config) if training.build else None
        result = models_handling.run_model(training.name, splits, config, model=model, callbacks=extra, backup=backup)
        if in_worker:
            result.model_file, result.model = model_bytes(result.model), None
    result.report, result.where = probe.report() if probe else None, this_process(placement)
    return result


def this_process(placement):
    """Where a training ran (summary.json's `where`): this host and process,
    then `placement` (threads, and jobs or cluster)."""
    return {"host": socket.gethostname(), "process": os.getpid(), **placement}


def model_bytes(model):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        return path.read_bytes()


def run_on_worker(training, data, topic, placement):
    """run_training inside a Dask worker: epoch lines go to the driver's topic."""
    from distributed import get_worker

    worker = get_worker()
    starting = [True]  # run_training's first line says the training starts

    def say(line):
        event = {"line": line, "worker": worker.address, "process": os.getpid()}
        if starting:
            event["started"] = training.describe()
            starting.clear()
        worker.log_event(topic, event)

    return run_training(training, data, {**placement, "threads": worker.state.nthreads}, say)


# ---------------------------------------------------------------- workers


def start_tensorflow(threads):
    """Import TensorFlow with `threads` intra- and inter-op threads; in a
    process where it already runs with other counts, leave them."""
    utils.import_tensorflow_quietly()
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # already started: TensorFlow cannot change them
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def installed_versions():
    """The TensorFlow and Keras versions of the process that runs it."""
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__}


def versions():
    """This (the driver's) process's versions, to compare a worker's with."""
    return installed_versions()


def tensorflow_threads_plugin():
    from distributed import WorkerPlugin

    class TensorFlowThreads(WorkerPlugin):
        """In every worker, before any training: TensorFlow with as many
        threads as the worker has (dask worker --nthreads), and Ctrl-C in the
        driver's terminal left to the driver, which cancels the trainings."""

        def setup(self, worker):
            import signal

            with contextlib.suppress(ValueError):  # only the main thread may set it
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            start_tensorflow(worker.state.nthreads)

    return TensorFlowThreads()


# ---------------------------------------------------------------- the executor


def jobs_for(jobs, count):
    """How many trainings run at once: `jobs` ("auto": the machine's cores),
    never more than there are trainings."""
    wanted = cores() if jobs == "auto" else int(jobs)
    return max(1, min(wanted, count))


class Executor:
    """Runs Trainings: `with Executor(jobs, cluster, count) as executor:
    executor.run(trainings, data, on_finished)`.

    jobs 1 and no cluster: in this process, one after the other, exactly as
    main.py trains one model (Dask is not started). jobs N: a LocalCluster of
    N worker processes on 127.0.0.1, each with cores // N threads. cluster:
    that scheduler's workers."""

    def __init__(self, jobs, cluster, count):
        self.address = cluster_address(cluster)
        if self.address:
            check_address(self.address)
        self.jobs = jobs_for(jobs, count) if not self.address else None
        self.client = self.local_cluster = None

    @property
    def in_process(self):
        return self.address is None and self.jobs == 1

    def placement(self):
        """How summary.json's `where` names this executor: its jobs or its cluster."""
        return {"cluster": self.address} if self.address else {"jobs": self.jobs}

    def describe(self):
        """Where the trainings run, for a line of output."""
        if self.address:
            return f"on {self.address}"
        return "in this process" if self.in_process else f"in {self.jobs} worker processes"

    def __enter__(self):
        if self.in_process:
            return self
        import distributed

        logging.getLogger("distributed").setLevel(logging.ERROR)  # a lost worker is handled, not a warning
        if self.address:
            self.client = connect(self.address)
        else:
            self.local_cluster = distributed.LocalCluster(
                n_workers=self.jobs,
                threads_per_worker=max(1, cores() // self.jobs),
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                silence_logs=logging.ERROR,
            )
            self.client = distributed.Client(self.local_cluster)
        try:
            self.prepare_workers()
        except BaseException:
            self.__exit__()
            raise
        return self

    def prepare_workers(self):
        if self.address:  # workers elsewhere get the project's code; local ones import it from here
            with tempfile.TemporaryDirectory() as folder:
                archive, path_module = (
                    Path(folder) / PROJECT_ARCHIVE,
                    Path(folder) / f"{PATH_MODULE}.py",
                )
                archive.write_bytes(project_archive())
                zip_beside_it = f"os.path.join(os.path.dirname(__file__), {PROJECT_ARCHIVE!r})"
                path_module.write_text(f"import os, sys\nsys.path.insert(0, {zip_beside_it})\n")
                self.client.upload_file(str(archive), load=False)  # saved beside each worker's own files
                self.client.upload_file(str(path_module))  # imported there: the modules come from the zip
        self.client.register_plugin(tensorflow_threads_plugin(), name="tensorflow-threads")
        mine = versions()
        for worker, theirs in self.client.run(installed_versions).items():
            if theirs != mine:
                raise utils.UsageError(
                    f"worker {worker} runs TensorFlow {theirs['tensorflow']} with Keras {theirs['keras']}, this "
                    f"process TensorFlow {mine['tensorflow']} with Keras {mine['keras']}: install "
                    "requirements.txt on every machine"
                )

    def __exit__(self, *exception):
        for closing in (self.client, self.local_cluster):
            if closing is not None:
                with contextlib.suppress(Exception):
                    closing.close()
        self.client = self.local_cluster = None

    def run(self, trainings, data, on_finished=None, local_callbacks=()):
        """Every training's records.ModelResult, in the order of `trainings`;
        `on_finished(index, finished)` is called as each one finishes.
        `local_callbacks`: Keras callbacks for trainings in this process
        (Ctrl-C's check; a worker has its own signals)."""
        trainings = list(trainings)
        if self.in_process:
            done = []
            for index, training in enumerate(trainings):
                done.append(
                    run_training(
                        training, data, {**self.placement(), "threads": threads_now()}, extra_callbacks=local_callbacks
                    )
                )
                if on_finished:
                    on_finished(index, done[-1])
            return done
        return self.run_on_cluster(trainings, data, on_finished)

    def run_on_cluster(self, trainings, data, on_finished):
        import distributed

        topic = f"lenet-progress-{self.client.id}"  # this driver's lines only
        self.client.subscribe_topic(topic, ProgressLines())
        # The data goes to the workers once, as a task's input rather than
        # scattered: Dask keeps a task's input and recomputes it on another
        # worker when the one holding it dies; scattered data would be lost
        # with it, and every training with it.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ll]arge (object|graph).*")  # the point: the data is large
            shared = self.client.submit(the_data, data, key=f"data-{data.key}-{self.client.id}", pure=False)
        # The longest first (Dask runs the higher priority first): the last
        # trainings to start are then short ones, and the workers finish close
        # together instead of one running on alone.
        images = len(data.y_train)
        futures = {
            index: self.client.submit(
                run_on_worker,
                training,
                shared,
                topic,
                self.placement(),
                pure=False,
                key=f"train-{index}-{training.describe()}-{self.client.id}",
                priority=expected_cost(training, images),
            )
            for index, training in sorted(enumerate(trainings), key=lambda pair: -expected_cost(pair[1], images))
        }
        position = {future.key: index for index, future in futures.items()}
        futures = list(futures.values())
        done = [None] * len(trainings)
        try:
            for future in distributed.as_completed(futures):
                index = position[future.key]
                done[index] = future.result()
                if on_finished:
                    on_finished(index, done[index])
        except BaseException:
            self.client.cancel(futures, force=True)
            raise
        finally:
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(topic)
        return done


def expected_cost(training, images):
    """A training's rough length, in milliseconds, to order trainings by:
    its steps (epochs at most) times a step's cost, which bench.py measured
    here at about 1.6 ms plus 0.08 ms per image of the batch for lenet, and
    about 11 % more for each BN (or reference) layer."""
    config = training.config
    steps = config.epochs * -(-int(images * (1 - config.val_split)) // config.batch_size)
    layers = len(VARIANTS.get(training.name, VARIANTS["lenet_fc_bn2"]))  # a reference: in lenet_fc_bn2's places
    return int(steps * (1.6 + 0.08 * config.batch_size) * (1 + 0.11 * layers))


class ProgressLines:
    """The driver's side of its trainings' progress events: each line
    printed, and a training that starts a second time (Dask reruns it when
    its worker is lost) says so first, in one line."""

    def __init__(self):
        self.started = {}  # training label: the worker it started on

    def __call__(self, event):
        message = event[1]
        label = message.get("started")
        if label is not None:
            if label in self.started:
                print(
                    f"{label}: its worker {self.started[label]} was lost; training it again from epoch 1 on "
                    f"{message['worker']}",
                    flush=True,
                )
            self.started[label] = message["worker"]
        print(message["line"], flush=True)


def the_data(data):
    """A task whose result is its input: the data, held by a worker."""
    return data
