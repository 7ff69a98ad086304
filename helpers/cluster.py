"""The notebooks' independent trainings as tasks of a Dask cluster, or one after another here.

``CLUSTER`` (a parameter of notebooks 3 and 4) says where ``train_each`` runs them:

    ""                 in this kernel, one after the other (the default, and Colab's)
    "local:N"          N worker processes on this machine (dask.distributed's LocalCluster),
                       the cores shared among them
    "tcp://HOST:PORT"  the workers of a running Dask scheduler (SLURM, Kubernetes, SSH boxes:
                       docs/cluster.md), which reach the run folder and the data at the same
                       paths as this kernel

A training is a function of the notebook, sent to a worker as it stands (cloudpickle) with
its arguments; it writes the run folder by path, as in the kernel, under the lock of the
notebook that sent it (``runlock.acting_for``), while each run's own lock keeps two workers
off one run. What a task printed is printed here when it ends. Dask rather than a scheduler
of our own: a dead worker's task is sent again (and resumes from its backup), and dask-jobqueue
and the Dask Kubernetes operator start workers on the clusters labs have.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import sys
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

from helpers import runlock
from helpers.runfolder import RunFolder

LOCAL = "local:"
# Environment of a local cluster's workers that sets TensorFlow's and oneDNN's threads.
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")

CONNECT_SECONDS = 30  # how long a scheduler's address is tried before the notebook stops
_clients: dict[str, object] = {}  # CLUSTER -> its distributed.Client, for this kernel


class TrainingTaskError(RuntimeError):
    """A training sent to a cluster failed; the message names each run and its worker's
    error. Runs that finished are published and kept."""


def address_problem(cluster: str) -> str | None:
    """What is wrong with a CLUSTER value, or None (checked before anything starts)."""
    if cluster == "":
        return None
    if cluster.startswith(LOCAL):
        workers = cluster.removeprefix(LOCAL)
        if workers.isdigit() and int(workers) >= 1:
            return None
        return f'must be "local:N" with N workers, 1 or more; got {cluster!r}'
    scheme, _, rest = cluster.rpartition("://")
    host, _, port = rest.rpartition(":")
    if scheme in ("", "tcp", "tls", "ws", "wss") and host and port.isdigit():
        return None
    return (f'must be "" (train here), "local:N" or a scheduler\'s address such as '
            f'"tcp://HOST:8786"; got {cluster!r}')


def cores() -> int:
    """The cores this process may use."""
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def local_worker_environment(workers: int, gpus: int = 0) -> dict[str, str]:
    """What a local cluster's workers start with: TensorFlow's threads set to an equal share
    of the cores (left alone, each worker's would use every core, and N workers would fight
    over them), and this kernel's import path, so the notebook's functions find ``helpers``.
    Workers that share a GPU take its memory as they need it, not all of it each."""
    threads = str(max(1, cores() // workers))
    environment = {**dict.fromkeys(THREAD_VARIABLES, threads),
                   "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
    if 0 < gpus < workers:
        environment["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    return environment


def gpu_of_worker(worker_name: object, gpus: int) -> str:
    """The GPU (CUDA_VISIBLE_DEVICES) local worker ``worker_name`` (0, 1, ...) trains on."""
    return str(int(worker_name) % gpus)


def _one_gpu_each(gpus: int):
    """A worker plugin that shows each local worker one GPU, before TensorFlow starts in it."""
    import distributed

    class OneGPUEach(distributed.WorkerPlugin):
        def setup(self, worker) -> None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu_of_worker(worker.name, gpus)

    return OneGPUEach()


def _gpus_here() -> int:
    import tensorflow as tf  # the kernel of notebooks 3 and 4 has it already

    return len(tf.config.list_physical_devices("GPU"))


def client(cluster: str):
    """The ``distributed.Client`` of CLUSTER for this kernel, started (local) or joined once."""
    problem = address_problem(cluster)
    if problem or not cluster:
        raise ValueError(f"CLUSTER {problem or 'is empty: nothing to connect to'}")
    if cluster not in _clients:
        try:  # only where a cluster is asked for: Colab's setup cell does not install it
            import distributed
        except ImportError:
            raise ImportError(f"CLUSTER = {cluster!r} needs Dask's distributed: pip install -r "
                              "requirements/cluster.txt (or CLUSTER = \"\" trains here).") from None

        if cluster.startswith(LOCAL):
            workers, gpus = int(cluster.removeprefix(LOCAL)), _gpus_here()
            # Errors only: the start-up log would otherwise land in the executed notebook.
            local = distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True,
                dashboard_address=":8787" if _has_dashboard() else None,
                silence_logs=logging.ERROR, env=local_worker_environment(workers, gpus),
                resources={"GPU": 1} if gpus else None)
            _clients[cluster] = distributed.Client(local)
            if gpus:  # each training on one GPU of its own, not all of them in each
                _clients[cluster].register_plugin(_one_gpu_each(gpus), name="one GPU each")
        else:
            try:
                _clients[cluster] = distributed.Client(cluster, timeout=CONNECT_SECONDS)
            except OSError as error:
                raise ConnectionError(
                    f"Cannot reach the Dask scheduler at {cluster} ({error}): start it and its "
                    "workers first (docs/cluster.md), or give CLUSTER = \"\" to train in this "
                    "kernel.") from None
    return _clients[cluster]


def _has_dashboard() -> bool:
    return importlib.util.find_spec("bokeh") is not None  # the dashboard's one extra package


def _resources(dask_client) -> dict | None:
    """One GPU per task where the workers declare GPUs (``dask worker --resources GPU=1``)."""
    workers = dask_client.scheduler_info().get("workers", {}).values()
    if any(worker.get("resources", {}).get("GPU") for worker in workers):
        return {"GPU": 1}
    return None


def _run_task(function: Callable, key: str, arguments: dict, root: str,
              holder: str | None) -> dict:
    """On a worker: ``function(key, **arguments)`` under the sending notebook's lock, with
    what it prints kept for the notebook; an error comes back as text (its type may not
    unpickle in the kernel)."""
    printed = io.StringIO()
    outcome = {"result": None, "error": None, "worker": _worker_name()}
    try:
        with runlock.acting_for(root, holder), contextlib.redirect_stdout(printed):
            outcome["result"] = function(key, **arguments)
    except Exception as error:  # noqa: BLE001  # every error goes back to the notebook
        outcome["error"] = f"{type(error).__name__}: {error}"
        outcome["traceback"] = traceback.format_exc()
    outcome["printed"] = printed.getvalue()
    return outcome


def _worker_name() -> str:
    try:
        import distributed

        return str(distributed.get_worker().address)
    except (ImportError, ValueError):
        return "this process"


def train_each(run: RunFolder, function: Callable, calls: dict[str, dict],
               cluster: str = "") -> dict[str, object]:
    """``function(key, **arguments)`` for each ``key: arguments`` of ``calls``, and what each
    returned, by key, in the order of ``calls``.

    ``cluster`` "" calls them here, one after the other, as a plain loop would. Otherwise each
    is a task of the cluster: all run at once as far as its workers allow, and what each task
    printed is printed here as it ends. When some fail, the others still finish (and are
    kept), then TrainingTaskError names every failed one with its worker's error.
    """
    if not cluster or not calls:  # nothing to send: no cluster started for it
        return {key: function(key, **arguments) for key, arguments in calls.items()}
    dask_client = client(cluster)
    with runlock.held(run.root, f"trainings on {cluster}"):
        holder = runlock.holder_token(run.root)
        batch = uuid.uuid4().hex[:8]  # task keys unique to this call: nothing is reused
        root, resources = str(Path(run.root).resolve()), _resources(dask_client)
        futures = {key: dask_client.submit(_run_task, function, key, arguments, root, holder,
                                           key=f"{key}-{batch}", pure=False,
                                           resources=resources)
                   for key, arguments in calls.items()}
        results, failures = {}, []
        for key, future in futures.items():
            try:
                outcome = future.result()
            except Exception as error:  # noqa: BLE001  # e.g. KilledWorker: died too often
                failures.append(f"{key}: {type(error).__name__}: {error}")
                continue
            print(outcome["printed"], end="")
            if outcome["error"]:
                failures.append(f"{key} (on {outcome['worker']}): {outcome['error']}")
                print(outcome["traceback"], file=sys.stderr)
            else:
                results[key] = outcome["result"]
    if failures:
        finished = ", ".join(results) or "none"
        raise TrainingTaskError(
            f"{len(failures)} of {len(calls)} trainings on {cluster} failed: "
            + "; ".join(failures) + f". Finished and kept in {run.root}: {finished}.")
    return results
