"""Where a run trains: one device, or several devices of this machine with
tf.distribute.MirroredStrategy.

TensorFlow's own engine does the work: it splits each global batch evenly
across the replicas, runs the step on each, and sums the gradients; BN's
statistics are shared across replicas inside the layer (lenet.BatchNorm).

Several machines (MultiWorkerMirroredStrategy, configured by TF_CONFIG) are
refused with a reason: Keras 3's fit cannot train under that strategy
(keras-team/keras#20585, open): it reduces whole (x, y) batches and scalar
logs in ways that strategy rejects.
"""

import contextlib
import json
import os

import keras
import tensorflow as tf

from utils import UsageError

MULTI_WORKER_ISSUE = "https://github.com/keras-team/keras/issues/20585"


def cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_now():
    """The threads TensorFlow's kernels use in this process."""
    return tf.config.threading.get_intra_op_parallelism_threads() or cores()


def refuse_multi_worker():
    """A one-line refusal when TF_CONFIG asks for several machines."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return
    try:
        workers = json.loads(text)["cluster"]["worker"]
    except (ValueError, KeyError, TypeError):
        raise UsageError(
            'TF_CONFIG is set but is not a cluster description (JSON such as {"cluster": {"worker": '
            '["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}); unset it to train on '
            "this machine"
        ) from None
    raise UsageError(
        f"TF_CONFIG names a cluster of {len(workers) if isinstance(workers, list) else '?'} worker(s), but "
        f"training on several machines needs Keras's fit to run under MultiWorkerMirroredStrategy, which Keras "
        f"{keras.__version__} cannot ({MULTI_WORKER_ISSUE}); unset TF_CONFIG and use --devices on one machine"
    )


def make_strategy(devices, batch_size):
    """The tf.distribute strategy for `--devices`, made before TensorFlow
    starts its devices (so that logical CPU devices can still be made).

    One device: TensorFlow's default strategy, the code path of a plain run.
    N devices: MirroredStrategy over N GPUs where the machine has them, else
    over N logical CPU devices that share the cores (to try and test on any
    machine).
    """
    refuse_multi_worker()
    if devices == 1:
        return tf.distribute.get_strategy()
    if batch_size % devices:
        raise UsageError(
            f"--batch_size {batch_size} does not split evenly over {devices} devices; use a multiple of "
            f"{devices} (such as {batch_size - batch_size % devices or devices})"
        )
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if devices > len(gpus):
            raise UsageError(f"--devices {devices}: this machine has {len(gpus)} GPU(s); ask for at most {len(gpus)}")
        return tf.distribute.MirroredStrategy([f"/gpu:{index}" for index in range(devices)])
    return mirrored_cpus(logical_cpus(devices))


def logical_cpus(count):
    """`count` logical CPU devices (at least; fewer may not be asked for once
    TensorFlow has started), which share the machine's cores."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    with contextlib.suppress(RuntimeError):  # TensorFlow already started its devices: use those there are
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    available = tf.config.list_logical_devices("CPU")
    if len(available) < count:
        raise UsageError(
            f"--devices {count}: TensorFlow already runs on {len(available)} CPU device(s) in this process; "
            "ask for the devices before anything else runs"
        )
    return available[:count]


def mirrored_cpus(cpus):
    """MirroredStrategy over logical CPU devices, reducing on the first of them.

    TensorFlow's default there, collective ops, keys each all-reduce by
    numbers that restart with every strategy object, so two strategies in one
    process (a study over 2, 4 and 8 devices; the tests) mix up each other's
    all-reduces."""
    return tf.distribute.MirroredStrategy(
        [cpu.name for cpu in cpus], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
