"""Trainings side by side: in worker processes of a local Dask cluster, and on
a real cluster on loopback (a scheduler and two one-thread workers started
here as processes, ended by their process ids), with its faults."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common import records
from common.config import VARIANTS
from conftest import THREADS, interrupt_once_written, make_config, mnist_like, write_npz
from harness import executor, results_folder
from test_main import run_main  # --jobs and --cluster given here win over its --jobs 1

# One loopback cluster serves every test here, so they run in one test process.
pytestmark = pytest.mark.xdist_group("loopback_cluster")

ROOT = Path(__file__).resolve().parents[1]
DASK = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")
# On TensorFlow's kernels (no compile-path timing), no plots: what these tests are about is where trainings run.
FAST = ["--epochs", "1", "--verbose", "0", "--jit_compile", "0", "--flag_visualizations", "0"]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LoopbackCluster:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1; with
    `certificates` (a folder made by make_certificates), over TLS."""

    def __init__(self, workers=2, certificates=None):
        self.certificates = certificates
        self.address = f"{'tls' if certificates else 'tcp'}://127.0.0.1:{free_port()}"
        # Workers start outside the project, without it on their path: the driver sends them its code.
        self.env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        self.scheduler = subprocess.Popen(
            [
                DASK,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                self.address.rsplit(":", 1)[1],
                "--no-dashboard",
                *self.tls("scheduler"),
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.workers = [self.start_worker() for _ in range(workers)]
        self.wait_for(workers)

    def start_worker(self):
        # --no-nanny: the process started here is the worker, so killing it kills the worker.
        return subprocess.Popen(
            [
                DASK,
                "worker",
                self.address,
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
                "--host",
                "127.0.0.1",
                *self.tls("worker"),
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
        )

    def tls(self, role):
        if not self.certificates:
            return []
        folder = self.certificates
        return [
            "--tls-ca-file",
            str(folder / "ca.pem"),
            "--tls-cert",
            str(folder / f"{role}.pem"),
            "--tls-key",
            str(folder / f"{role}.key"),
        ]

    def wait_for(self, count):
        import distributed

        security = None
        if self.certificates:
            security = distributed.Security(
                tls_ca_file=str(self.certificates / "ca.pem"),
                tls_client_cert=str(self.certificates / "client.pem"),
                tls_client_key=str(self.certificates / "client.key"),
            )
        with distributed.Client(self.address, timeout=30, security=security) as client:
            client.wait_for_workers(count, timeout=60)

    def close(self):
        for process in [*self.workers, self.scheduler]:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait(30)


@pytest.fixture(scope="module")
def cluster():
    if DASK is None:
        pytest.skip("the dask command is not installed (requirements.txt installs it)")
    started = LoopbackCluster()
    yield started
    started.close()


def accuracies(results):
    return {name: entry["test_accuracy"] for name, entry in json.loads((results / "summary.json").read_text()).items()}


def test_the_sweep_on_a_loopback_cluster_equals_jobs_2(cluster, small_npz, tmp_path, capsys):
    """--jobs 2 (a local cluster's workers) and --cluster (the loopback
    cluster's): the same histories and test figures, each written here.
    (That a worker trains as this process does at the same thread count is
    the killed-worker test's comparison.)"""
    common = ["--model", "all", "--data", small_npz, *FAST]
    places = {"local": ["--jobs", 2], "cluster": ["--cluster", cluster.address]}
    outputs = {}
    for place, where in places.items():
        code, outputs[place], err = run_main([*common, "--results_dir", tmp_path / place, *where], capsys)
        assert code == 0, err
    summaries = {place: json.loads((tmp_path / place / "summary.json").read_text()) for place in places}
    assert sorted(summaries["cluster"]) == sorted(summaries["local"]) == sorted(VARIANTS)  # finish order
    for name in VARIANTS:
        histories = {place: results_folder.read_history(tmp_path / place / f"{name}_history.csv") for place in places}
        for key in records.HISTORY_KEYS:
            np.testing.assert_allclose(
                histories["cluster"][key], histories["local"][key], rtol=1e-6, atol=1e-6, err_msg=f"{name} {key}"
            )
        assert summaries["cluster"][name]["test_accuracy"] == pytest.approx(
            summaries["local"][name]["test_accuracy"], abs=1e-6
        )
        for place in places:
            assert (tmp_path / place / f"{name}.keras").stat().st_size > 10_000
    where = {
        place: json.loads((tmp_path / place / "timings.json").read_text())["lenet_bn2"]["where"] for place in places
    }
    assert where["local"]["jobs"] == 2 and where["local"]["threads"] == 1 and where["local"]["process"] != os.getpid()
    assert where["cluster"]["cluster"] == cluster.address and where["cluster"]["threads"] == 1
    for place in places:  # relayed from the workers, a line per epoch
        assert "lenet_fc_bn2 epoch 1/1: loss " in outputs[place] and ", val_accuracy " in outputs[place]


def test_a_cluster_where_nothing_listens_is_one_line_within_10_s(small_npz, tmp_path, capsys):
    start = time.monotonic()
    code, out, err = run_main(
        ["--data", small_npz, "--results_dir", tmp_path / "results", "--cluster", f"tcp://127.0.0.1:{free_port()}"],
        capsys,
    )
    assert time.monotonic() - start < 10
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no Dask scheduler answers there" in lines[0], err
    assert "dask scheduler" in lines[0] and "drop --cluster" in lines[0]
    assert not (tmp_path / "results").exists()


def test_a_worker_with_other_versions_is_refused_before_any_training(cluster, small_npz, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(executor, "versions", lambda: {"tensorflow": "2.99.0", "keras": "3.99.0"})
    code, out, err = run_main(
        ["--data", small_npz, "--results_dir", tmp_path / "results", "--cluster", cluster.address, *FAST], capsys
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "runs TensorFlow 2.21.0 with Keras 3.15.1, this process TensorFlow 2.99.0 with Keras 3.99.0" in lines[0]
    assert not (tmp_path / "results" / "summary.json").exists()


def test_two_drivers_on_one_cluster_into_one_folder_keep_both_runs_entries(cluster, tmp_path, capsys):
    """One driver in a process of its own, one in this process, at once."""
    data = write_npz(tmp_path / "data.npz", *mnist_like(num_train=200, num_test=40))
    results = tmp_path / "results"
    arguments = ["--data", str(data), "--results_dir", str(results), "--cluster", cluster.address, *FAST]
    other = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "--model", "lenet", *arguments],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    code, out, err = run_main(["--model", "lenet_bn1", *arguments], capsys)
    other_out, other_err = other.communicate(timeout=200)
    assert code == 0 and other.returncode == 0 and "Traceback" not in err + other_err, other_err
    assert "lenet_bn1 epoch" in out and "lenet_bn1 epoch" not in other_out  # each relays its own lines only
    assert sorted(accuracies(results)) == ["lenet", "lenet_bn1"]


def test_ctrl_c_cancels_the_trainings_keeps_the_finished_and_resume_trains_the_rest(cluster, tmp_path, capsys):
    data = write_npz(tmp_path / "data.npz", *mnist_like(num_train=400, num_test=40))
    results = tmp_path / "results"
    arguments = [
        "--model",
        "all",
        "--data",
        str(data),
        "--results_dir",
        str(results),
        "--epochs",
        "2",
        "--verbose",
        "0",
        "--jit_compile",
        "0",
        "--flag_visualizations",
        "0",
    ]
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *arguments, "--cluster", cluster.address],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    summary = results / "summary.json"
    out, err = interrupt_once_written(driver, summary, 150)
    assert driver.returncode == 130, err
    assert "Traceback" not in err and "have their results in" in err
    first = json.loads(summary.read_text())
    assert 1 <= len(first) < 5

    code, out, err = run_main([*arguments, "--resume", "1", "--jobs", "1"], capsys)
    assert code == 0, err
    skipped = [
        name
        for name in VARIANTS
        if f"\n{name}: finished earlier with the same settings and data; skipped (--resume)" in out
    ]
    trained = [name for name in VARIANTS if f"\n{name}: test accuracy" in out]
    assert sorted(skipped) == sorted(first) and sorted([*skipped, *trained]) == sorted(VARIANTS)
    assert sorted(json.loads(summary.read_text())) == sorted(VARIANTS)


def test_a_worker_killed_mid_training_is_replaced_and_the_history_is_unchanged(cluster, tmp_path, capsys, monkeypatch):
    """SIGKILL to the worker training lenet_fc_bn2 once its first epoch is
    reported: Dask reruns that training on the other worker, and the history
    equals that of the same training in this process (one TensorFlow thread
    in both: conftest.py gives each test process its share of 2 cores)."""
    data = write_npz(tmp_path / "data.npz", *mnist_like(num_train=600, num_test=40))
    args = [
        "--model",
        "lenet_fc_bn2",
        "--data",
        data,
        "--epochs",
        "4",
        "--verbose",
        "0",
        "--jit_compile",
        "0",
        "--flag_visualizations",
        "0",
    ]
    code, out, err = run_main([*args, "--results_dir", tmp_path / "here", "--jobs", 1], capsys)
    assert code == 0, err

    import distributed

    workers, victim = {process.pid for process in cluster.workers}, []

    def kill_after_first_epoch(event):
        """The progress event names the worker process that trains."""
        if not victim and "epoch 1/4" in event[1]["line"]:
            assert event[1]["process"] in workers
            victim.append(event[1]["process"])
            os.kill(victim[0], signal.SIGKILL)

    real_subscribe = distributed.Client.subscribe_topic
    monkeypatch.setattr(
        distributed.Client,
        "subscribe_topic",
        lambda self, topic, handler: real_subscribe(
            self, topic, lambda event: (handler(event), kill_after_first_epoch(event))
        ),
    )
    code, out, err = run_main([*args, "--results_dir", tmp_path / "cluster", "--cluster", cluster.address], capsys)
    assert code == 0, err
    assert victim, "no worker was killed"
    here, there = (
        results_folder.read_history(tmp_path / folder / "lenet_fc_bn2_history.csv") for folder in ("here", "cluster")
    )
    # At another thread count here (pytest -n 0 on several cores), float rounding differs.
    tolerance = 1e-6 if THREADS == 1 else 1e-3
    for key in records.HISTORY_KEYS:
        np.testing.assert_allclose(there[key], here[key], rtol=tolerance, atol=tolerance)
    assert out.count("lenet_fc_bn2 epoch 1/4") == 2  # once on the killed worker, once on the other
    # The restart said so, once, naming the lost worker.
    restarts = [line for line in out.splitlines() if "was lost; training it again from epoch 1 on" in line]
    assert len(restarts) == 1 and restarts[0].startswith("lenet_fc_bn2: its worker tcp://127.0.0.1:"), out


# ---------------------------------------------------------------- TLS


def make_certificates(folder, prefix=""):
    """A throwaway certificate authority and, signed by it, a certificate and
    key for the scheduler, the worker and the client (elliptic-curve keys,
    made by the openssl command), for 127.0.0.1."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*arguments):
        subprocess.run(["openssl", *arguments], cwd=folder, check=True, capture_output=True)

    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req",
        "-x509",
        *curve,
        "-keyout",
        f"{prefix}ca.key",
        "-out",
        f"{prefix}ca.pem",
        "-days",
        "2",
        "-subj",
        f"/CN={prefix}test CA",
    )
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for role in ("scheduler", "worker", "client"):
        name = f"{prefix}{role}"
        openssl("req", *curve, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=127.0.0.1")
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            f"{prefix}ca.pem",
            "-CAkey",
            f"{prefix}ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        )
    return folder


TLS_ENVIRONMENT = (
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY",
)


def client_certificates(monkeypatch, folder, ca="ca.pem", client="client"):
    """Dask's configuration for this process's client, as its users set it: environment variables."""
    import dask

    for name, path in zip(TLS_ENVIRONMENT, (folder / ca, folder / f"{client}.pem", folder / f"{client}.key")):
        monkeypatch.setenv(name, str(path))
    dask.config.refresh()


@pytest.mark.xdist_group("tls_cluster")
def test_a_tls_cluster_trains_as_jobs_1_and_refuses_a_client_without_a_valid_certificate(
    small_npz, tmp_path, capsys, monkeypatch
):
    import dask

    if DASK is None or shutil.which("openssl") is None:
        pytest.skip("needs the dask and openssl commands")
    certificates = make_certificates(tmp_path / "certificates")
    make_certificates(certificates, prefix="rogue_")  # another authority's, which the cluster does not trust
    common = ["--model", "lenet_bn2", "--data", small_npz, *FAST]
    code, out, err = run_main([*common, "--results_dir", tmp_path / "here", "--jobs", 1], capsys)
    assert code == 0, err
    cluster = LoopbackCluster(workers=1, certificates=certificates)
    try:
        # No certificate configured: refused here, in one line, before anything is loaded or trained.
        monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
        dask.config.refresh()
        code, out, err = run_main([*common, "--results_dir", tmp_path / "none", "--cluster", cluster.address], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "distributed.comm.tls.ca-file and distributed.comm.tls.client.cert" in err
        assert not (tmp_path / "none").exists()
        # A certificate of another authority: the scheduler refuses the handshake.
        client_certificates(monkeypatch, certificates, client="rogue_client")
        code, out, err = run_main([*common, "--results_dir", tmp_path / "rogue", "--cluster", cluster.address], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        # Usually "the TLS handshake failed (... UNKNOWN_CA ...)"; under load Dask may report the closed
        # connection without the TLS alert. Either way: refused, one line, nothing written.
        assert f"--cluster {cluster.address}: " in err and not (tmp_path / "rogue").exists(), err
        # The cluster's own: trained there, written here, as in this process.
        client_certificates(monkeypatch, certificates)
        code, out, err = run_main([*common, "--results_dir", tmp_path / "tls", "--cluster", cluster.address], capsys)
        assert code == 0, err
    finally:
        cluster.close()
        for name in TLS_ENVIRONMENT:  # Dask's configuration as it was, for the tests after this one
            monkeypatch.delenv(name, raising=False)
        dask.config.refresh()
    here, there = (
        json.loads((tmp_path / place / "summary.json").read_text())["lenet_bn2"] for place in ("here", "tls")
    )
    where = json.loads((tmp_path / "tls" / "timings.json").read_text())["lenet_bn2"]["where"]
    assert where["cluster"] == cluster.address
    assert there["test_accuracy"] == pytest.approx(here["test_accuracy"], abs=1e-6)
    for key in records.HISTORY_KEYS:
        np.testing.assert_allclose(
            results_folder.read_history(tmp_path / "tls" / "lenet_bn2_history.csv")[key],
            results_folder.read_history(tmp_path / "here" / "lenet_bn2_history.csv")[key],
            rtol=1e-6,
            atol=1e-6,
        )


@pytest.mark.parametrize(
    "address, message",
    [
        ("tls://127.0.0.1:9", "lacks distributed.comm.tls.ca-file"),
        ("foo://127.0.0.1:9", "Dask knows no foo:// scheme"),
    ],
)
def test_an_address_a_client_cannot_use_is_one_line_before_anything_is_loaded(
    address, message, small_npz, tmp_path, capsys, monkeypatch
):
    import dask

    for name in TLS_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    dask.config.refresh()
    code, out, err = run_main(
        ["--data", small_npz, "--results_dir", tmp_path / "results", "--cluster", address, *FAST], capsys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "results").exists()


def test_the_longest_trainings_are_expected_longest():
    def cost(name, **changes):
        return executor.expected_cost(executor.Training(name, make_config(**changes)), images=1000)

    # 850 training images at batch 2 are 425 steps an epoch; at 256, 4.
    assert cost("lenet", batch_size=2) > cost("lenet", batch_size=256)
    assert cost("lenet", epochs=10) == pytest.approx(10 * cost("lenet", epochs=1), rel=0.01)
    assert cost("lenet") < cost("lenet_bn1") < cost("lenet_fc_bn2") == cost("lenet_gn")
    assert cost("lenet", batch_size=64, epochs=1) == int(14 * (1.6 + 0.08 * 64))
