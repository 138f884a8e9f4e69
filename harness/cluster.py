"""An existing Dask cluster (--cluster): its address, the connection to it,
and the project's code as the zip its workers receive. harness/executor.py
runs the trainings there; this is how they get there."""

import io
import os
import zipfile
from pathlib import Path

import utils

# Seconds to wait for a --cluster scheduler to answer, and for it to have a worker.
CONNECT_SECONDS = 5
WORKER_WAIT_SECONDS = 60
# The project's code, which a worker of an existing cluster receives as one
# zip (Client.upload_file): every module at the top level and in its packages.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_ARCHIVE = "lenet_bn_project.zip"
# A one-line module, imported on each worker, that puts the zip on sys.path.
# (Dask's own loading of a zip would import and then reload every module in
# it, leaving two copies of a class such as lenet.BatchNorm.)
PATH_MODULE = "lenet_bn_project_path"


def cluster_address(cluster):
    """--cluster, or Dask's own DASK_SCHEDULER_ADDRESS when --cluster is not given."""
    return cluster or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


def project_archive():
    """The project's code as zip bytes: every .py at the top level and in its packages."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted([*PROJECT_ROOT.glob("*.py"), *PROJECT_ROOT.glob("*/__init__.py")]):
            if path.parent == PROJECT_ROOT:
                archive.write(path, path.name)
            else:
                for module in sorted(path.parent.glob("*.py")):
                    archive.write(module, module.relative_to(PROJECT_ROOT).as_posix())
    return buffer.getvalue()


# What a client of a tls:// scheduler needs in Dask's configuration, with the
# environment variable that sets each.
TLS_SETTINGS = {
    "distributed.comm.tls.ca-file": "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
    "distributed.comm.tls.client.cert": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
}


def check_address(address):
    """Refuse, in one line before anything is loaded, a scheduler address
    whose scheme Dask does not know, and a tls:// one without this client's
    certificates in Dask's configuration (docs/devices_and_clusters.md)."""
    import dask
    from distributed.comm.registry import backends

    scheme = address.split("://", 1)[0] if "://" in address else "tcp"
    if scheme not in backends:
        raise utils.UsageError(
            f"--cluster {address}: Dask knows no {scheme}:// scheme ({', '.join(sorted(backends))}); use "
            "tcp://HOST:8786, or tls://HOST:8786 with certificates"
        )
    missing = [setting for setting in TLS_SETTINGS if not dask.config.get(setting, None)]
    if scheme == "tls" and missing:
        raise utils.UsageError(
            f"--cluster {address}: a TLS scheduler admits only clients with a certificate, and Dask's configuration "
            f"lacks {' and '.join(missing)}: set them (the environment variables "
            f"{' and '.join(TLS_SETTINGS[setting] for setting in missing)}, and "
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY where the key is a file of its own)"
        )


def connect(address):
    """A Client of the scheduler at `address`, with at least one worker, or a
    one-line UsageError within CONNECT_SECONDS."""
    import distributed

    try:
        client = distributed.Client(address, timeout=CONNECT_SECONDS)
    except (OSError, TimeoutError, ValueError) as error:
        reason = utils.one_line(error)
        if address.startswith("tls://") and any(word in reason for word in ("SSL", "certificate", "handshake")):
            raise utils.UsageError(
                f"--cluster {address}: the TLS handshake failed ({reason}): the scheduler does not accept this "
                "client's certificate, or this client does not trust the scheduler's (distributed.comm.tls.*)"
            ) from None
        raise utils.UsageError(
            f"--cluster {address}: no Dask scheduler answers there ({reason}); start one with "
            "`dask scheduler` and a worker with `dask worker ADDRESS`, or drop --cluster to train on this machine"
        ) from None
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
    except TimeoutError:
        client.close()
        raise utils.UsageError(
            f"--cluster {address}: the scheduler has had no worker for {WORKER_WAIT_SECONDS} s; start one with "
            f"`dask worker {address}`"
        ) from None
    return client
