"""Trainings as tasks of a Dask cluster (helpers/cluster.py): the same runs as in the kernel,
each run's own lock, a dead worker's training resumed, failures named. The whole smoke
study on a local cluster is in tests/test_smoke_study.py."""

import json
import os
import shutil
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from helpers import cluster, data, project, runlock, training
from helpers.runfolder import RunFolder
from helpers.tools import notebooks, parameters

pytest.importorskip("distributed")


@pytest.mark.parametrize("value", ["", "local:1", "local:8", "tcp://10.0.0.5:8786",
                                   "node17:8786", "tls://scheduler.lab:8786"])
def test_cluster_values_that_are_accepted(value):
    assert cluster.address_problem(value) is None
    assert parameters.problems({"CLUSTER": value}) == []


@pytest.mark.parametrize("value", ["local", "local:0", "local:two", "local:-1", "8786",
                                   "http://scheduler:8786", "tcp://scheduler", "yes"])
def test_cluster_values_that_are_refused_before_anything_starts(value):
    problem = cluster.address_problem(value)
    assert problem is not None and repr(value) in problem
    assert parameters.problems({"CLUSTER": value}) == [f"CLUSTER {problem}"]


def test_local_workers_share_the_cores_and_find_the_helpers():
    environment = cluster.local_worker_environment(2)
    threads = max(1, cluster.cores() // 2)
    for variable in cluster.THREAD_VARIABLES:
        assert environment[variable] == str(threads)
    assert str(notebooks.SOURCE_DIR.parent) in environment["PYTHONPATH"].split(os.pathsep)


def test_an_address_where_no_scheduler_answers_stops_with_what_to_do(monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_SECONDS", 1)
    with pytest.raises(ConnectionError, match=r"Cannot reach the Dask scheduler at "
                                              r"tcp://127\.0\.0\.1:9.*docs/cluster\.md"):
        cluster.client("tcp://127.0.0.1:9")
    assert "tcp://127.0.0.1:9" not in cluster._clients


def test_local_workers_each_get_one_gpu_and_share_one_only_when_fewer():
    assert [cluster.gpu_of_worker(name, 4) for name in range(4)] == ["0", "1", "2", "3"]
    assert [cluster.gpu_of_worker(name, 2) for name in range(4)] == ["0", "1", "0", "1"]
    assert "TF_FORCE_GPU_ALLOW_GROWTH" not in cluster.local_worker_environment(4, gpus=4)
    assert "TF_FORCE_GPU_ALLOW_GROWTH" not in cluster.local_worker_environment(2, gpus=0)
    assert cluster.local_worker_environment(4, gpus=2)["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"


def test_nothing_to_train_starts_no_cluster(tmp_path):
    assert cluster.train_each(RunFolder(tmp_path), tiny_training, {}, "local:3") == {}
    assert "local:3" not in cluster._clients


@pytest.fixture()
def run(synthetic_source, tmp_path) -> RunFolder:
    root, _ = synthetic_source
    assert data.main(["prepare", "--source", "local", "--data-dir", str(root),
                      "--run-dir", str(tmp_path / "run")]) == 0
    return RunFolder(tmp_path / "run")


class KillThisProcessOnce(keras.callbacks.Callback):
    """Kills its own process (the worker) in the middle of epoch ``epoch`` (after its third
    step), the first time only: ``marker`` records that it happened."""

    def __init__(self, epoch: int, marker: str):
        super().__init__()
        self.epoch, self.marker, self.current = epoch, marker, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 2 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


def tiny_training(name: str, root: str, seed: int = 7, epochs: int = 3, fail: bool = False,
                  kill_in_epoch: int | None = None) -> dict:
    """A small recipe as a notebook cell writes it, sent to the cluster as a notebook's is."""
    print(f"{name}: training in process {os.getpid()}")
    if fail:
        raise ValueError(f"{name} broke on purpose")
    run = RunFolder(root)
    training_run = training.TrainingRun(run, name, label="Tiny CNN", seed=seed,
                                        deterministic=True, parameters={"EPOCHS": epochs})
    train_data, validation_data = training_run.datasets(image_size=16, batch_size=8,
                                                        max_images=48, cache=None)
    model = notebooks.baseline_cnn(16, widths=(4, 8), seed=seed)
    model.compile(optimizer=keras.optimizers.AdamW(
                      training.warmup_cosine(2e-3, training_run.steps_per_epoch, epochs)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks = training_run.callbacks(patience=9, precise_batchnorm_images=16)
    if kill_in_epoch is not None:
        callbacks.append(KillThisProcessOnce(kill_in_epoch, f"{root}/killed-{name}"))
    if training_run.needs_training(model):
        model.fit(train_data, validation_data=validation_data, epochs=epochs, verbose=2,
                  callbacks=callbacks)
    return training_run.finish()


def _copy_split(run, folder) -> RunFolder:
    shutil.copytree(run.root / "data", folder / "data")
    return RunFolder(folder)


def _in_kernel_with_worker_threads(run, folder, calls: dict[str, dict]) -> RunFolder:
    """``calls`` of tiny_training trained one after another, as CLUSTER = "" does, in a
    process with the CPU threads of a worker of "local:2"."""
    threads = cluster.local_worker_environment(2)["TF_NUM_INTRAOP_THREADS"]
    in_kernel = _copy_split(run, folder)
    subprocess.run([sys.executable, "-c", (
        "import json, sys; from helpers import cluster; from helpers.runfolder import "
        "RunFolder; from tests.test_cluster import tiny_training; "
        "cluster.train_each(RunFolder(sys.argv[1]), tiny_training, {name: {**arguments, "
        "'root': sys.argv[1]} for name, arguments in json.loads(sys.argv[2]).items()})"),
        str(in_kernel.root), json.dumps(calls)], check=True, capture_output=True,
        cwd=notebooks.SOURCE_DIR.parent, timeout=300,
        env={**os.environ, **dict.fromkeys(cluster.THREAD_VARIABLES, threads)})
    return in_kernel


def _assert_same_runs(run, other, names):
    for name in names:
        mine, theirs = run.read_history(name), other.read_history(name)
        for column in ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]:
            np.testing.assert_allclose(mine[column], theirs[column], rtol=1e-6,
                                       err_msg=f"{name} {column}")
        weights = [keras.saving.load_model(folder.model(name)).get_weights()
                   for folder in (run, other)]
        for a, b in zip(*weights, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        assert (run.read_run_record(name)["fingerprints"]
                == other.read_run_record(name)["fingerprints"])


@pytest.fixture(scope="module")
def local_cluster():
    """Two workers on this machine, as CLUSTER = "local:2" starts them; closed at the end."""
    dask_client = cluster.client("local:2")
    yield dask_client
    cluster._clients.pop("local:2")
    dask_client.cluster.close()
    dask_client.close()


def test_trainings_on_workers_match_the_kernel_and_print_here(run, tmp_path, local_cluster,
                                                              capsys):
    """Same seed, data order and recipe: the same model. The kernel's runs train in a process
    with a worker's CPU threads (a sum split over other threads adds in another order)."""
    calls = {"tiny_a": {"seed": 7}, "tiny_b": {"seed": 8}}
    in_kernel = _in_kernel_with_worker_threads(run, tmp_path / "kernel", calls)
    results = cluster.train_each(
        run, tiny_training, {key: {**arguments, "root": str(run.root)}
                             for key, arguments in calls.items()}, "local:2")
    assert list(results) == list(calls)  # in the order asked, whichever ended first
    assert results == {name: json.loads(in_kernel.validation_metrics(name).read_text())
                       for name in calls}
    _assert_same_runs(run, in_kernel, calls)
    assert {run.read_run_record(name)["cpu_threads"] for name in calls} == {
        int(cluster.local_worker_environment(2)["TF_NUM_INTRAOP_THREADS"])}
    printed = capsys.readouterr().out
    pids = {line.split("process ")[1] for line in printed.splitlines() if "training in" in line}
    assert len(pids) == 2 and str(os.getpid()) not in pids  # two workers, not this kernel
    assert "Epoch 3/3" in printed  # fit's own lines, from the worker
    assert not runlock.lock_path(run.root).exists()  # the kernel's lock, given back


def test_a_failed_training_is_named_and_the_others_are_kept(run, local_cluster):
    with pytest.raises(cluster.TrainingTaskError) as raised:
        cluster.train_each(run, tiny_training,
                           {"tiny_a": {"root": str(run.root)},
                            "tiny_broken": {"root": str(run.root), "fail": True}}, "local:2")
    message = str(raised.value)
    assert "1 of 2 trainings on local:2 failed" in message
    assert "tiny_broken (on tcp://" in message and "ValueError: tiny_broken broke" in message
    assert "Finished and kept in" in message and message.endswith(": tiny_a.")
    assert run.validation_metrics("tiny_a").exists()


def test_no_two_processes_ever_train_the_same_run(run, local_cluster):
    """The run's own lock, held here (as by a second notebook training it), refuses the
    worker; the run folder's lock alone would have let it in (the worker acts for this
    kernel)."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from helpers import runlock; "
        "runlock.acquire(sys.argv[2], 'training tiny_a'); print('held', flush=True); "
        "time.sleep(120)"), str(notebooks.SOURCE_DIR.parent), str(run.training_lock("tiny_a"))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(cluster.TrainingTaskError,
                           match=rf"tiny_a \(on tcp://.*in use by process {holder.pid}"):
            cluster.train_each(run, tiny_training, {"tiny_a": {"root": str(run.root)}},
                               "local:2")
    finally:
        holder.kill()
        holder.wait()
    assert not run.history("tiny_a").exists()


def test_a_worker_killed_mid_training_resumes_from_its_backup(run, tmp_path, local_cluster,
                                                              capsys):
    straight = _in_kernel_with_worker_threads(run, tmp_path / "straight", {"tiny_a": {}})
    cluster.train_each(run, tiny_training,
                       {"tiny_a": {"root": str(run.root), "kill_in_epoch": 1}}, "local:2")
    assert (run.root / "killed-tiny_a").exists()  # the worker died in epoch 2, after 1's backup
    printed = capsys.readouterr().out  # what the task sent again printed: from epoch 2 on
    assert "Epoch 1/3" not in printed and "Epoch 2/3" in printed
    assert run.read_history("tiny_a")["epoch"].tolist() == [0, 1, 2]
    _assert_same_runs(run, straight, ["tiny_a"])


def test_the_replicas_bench_times_each_way_of_training_on_several_devices(tmp_path):
    """helpers/tools/bench_replicas.py, as a user runs it: two simulated devices (logical
    CPU devices, worker processes), tiny trainings; each way timed and written."""
    out = tmp_path / "replicas.json"
    done = subprocess.run([sys.executable, "-m", "helpers.tools.bench_replicas", "--out",
                           str(out), "--devices", "2", "--images", "128", "--epochs", "1",
                           "--image-size", "32"], capture_output=True, text=True,
                          cwd=project.ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    for way in ("one_device_in_turn_seconds", "mirrored_in_turn_seconds",
                "tasks_at_once_seconds"):
        assert report[way] > 0 and f"{report[way]:7.1f} s" in done.stdout
    assert len(report["tasks_each_seconds"]) == 2 and report["devices"] == 2
    # A bad output path is refused before the minutes of work, in one line.
    refused = subprocess.run([sys.executable, "-m", "helpers.tools.bench_replicas", "--out",
                              str(tmp_path)], capture_output=True, text=True,
                             cwd=project.ROOT, timeout=120)
    assert refused.returncode == 1 and refused.stderr.startswith("error: ")

