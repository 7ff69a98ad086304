"""N trainings on N devices: one after another, each a MirroredStrategy over all N (what
``CLUSTER = ""`` does on an N-GPU machine), or all at once, one device each, as tasks of
``CLUSTER = "local:N"``. Which is faster for the study as a whole?

    python -m helpers.tools.bench_replicas --out FILE [--devices 4] [--images 2048]
                                           [--epochs 2] [--image-size 64]

Each training is notebook 3's CNN (without its augmentation) fitted on random in-memory
images, batch 64 per device, as the notebooks do: under MirroredStrategy the global batch is
64 x N, so each training takes N times fewer steps, and the recipe differs from one device's.
A third figure trains the N one after another on one device, the reference.

With N GPUs it measures them. Without, it simulates them as the tests do: N logical CPU
devices for MirroredStrategy, N worker processes sharing the cores for the tasks. Simulated
devices share one CPU, so their figures measure the mechanics' costs (the all-reduce of
every step, the workers' start), not what N GPUs would gain.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from helpers import cluster, files, project
from helpers.tools import command, outputs

BATCH_PER_DEVICE = 64


def train_cnns(seeds: list[int], images: int, epochs: int, image_size: int,
               devices: int = 1) -> float:
    """Seconds to build and fit notebook 3's CNN once per seed, one after another, each under
    a MirroredStrategy over ``devices`` devices (GPUs, else logical CPU devices) when above 1.
    Must run in a fresh process when ``devices`` > 1 (the CPU is split before TensorFlow starts).
    """
    import numpy as np
    import tensorflow as tf

    from helpers import devices as devices_module
    from helpers.tools import bench, notebooks

    gpus = tf.config.list_physical_devices("GPU")
    if devices > 1 and len(gpus) < devices:
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration()] * devices)
    kind = "GPU" if len(gpus) >= devices > 1 else "CPU"
    strategy = (tf.distribute.MirroredStrategy([f"/{kind}:{index}" for index in range(devices)])
                if devices > 1 else tf.distribute.get_strategy())
    devices_module.configure_precision("auto")
    pixels = np.random.default_rng(0).uniform(0, 255, (images, image_size, image_size, 3))
    data = bench.in_memory_batches(pixels.astype("float32"), np.arange(images) % 8,
                                   BATCH_PER_DEVICE * devices)
    started = time.perf_counter()
    for seed in seeds:
        with strategy.scope():
            model = notebooks.baseline_cnn(image_size, augment=False, seed=seed)
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(data, epochs=epochs, verbose=0)
    return time.perf_counter() - started


def _in_fresh_process(seeds: list[int], images: int, epochs: int, image_size: int,
                      devices: int) -> float:
    code = ("import json, sys\nfrom helpers.tools import bench_replicas\n"
            "print(bench_replicas.train_cnns(*json.loads(sys.argv[1])))")
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps([seeds, images, epochs, image_size, devices])],
        capture_output=True, text=True, cwd=project.ROOT, check=False)
    if done.returncode:
        raise RuntimeError(f"Training with {devices} devices failed: {done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def measure(devices: int, images: int, epochs: int, image_size: int) -> dict:
    """Wall seconds of ``devices`` trainings each way, and the start of the local cluster."""
    seeds = list(range(devices))
    arguments = (images, epochs, image_size)
    report = {"devices": devices, "images": images, "epochs": epochs,
              "image_size": image_size, "batch_per_device": BATCH_PER_DEVICE,
              "cores": cluster.cores()}
    report["one_device_in_turn_seconds"] = _in_fresh_process(seeds, *arguments, 1)
    report["mirrored_in_turn_seconds"] = _in_fresh_process(seeds, *arguments, devices)
    started = time.perf_counter()
    dask_client = cluster.client(f"{cluster.LOCAL}{devices}")
    dask_client.wait_for_workers(devices)
    report["cluster_start_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    futures = [dask_client.submit(train_cnns, [seed], *arguments, pure=False) for seed in seeds]
    workers_seconds = dask_client.gather(futures)
    report["tasks_at_once_seconds"] = time.perf_counter() - started
    report["tasks_each_seconds"] = workers_seconds
    dask_client.shutdown()  # this command started it: its workers end with it
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.tools.bench_replicas",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON report")
    parser.add_argument("--devices", type=int, default=4, help="N: devices and trainings")
    parser.add_argument("--images", type=int, default=2048, help="images per training")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per training")
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv)
    if min(args.devices, args.images, args.epochs, args.image_size) < 1:
        parser.error("--devices, --images, --epochs and --image-size must be 1 or more")
    return command.exit_status(lambda: _measure_and_write(args))


def _measure_and_write(args: argparse.Namespace) -> int:
    outputs.check_output_path(args.out, ".json")  # before the minutes of work, not after
    report = measure(args.devices, args.images, args.epochs, args.image_size)
    files.write_json(report, args.out)
    in_turn, mirrored = report["one_device_in_turn_seconds"], report["mirrored_in_turn_seconds"]
    ways = {"one device, one after another": in_turn,
            "MirroredStrategy, one after another": mirrored,
            f"tasks of local:{args.devices}, at once": report["tasks_at_once_seconds"]}
    print(f"{args.devices} trainings of {args.images} images x {args.epochs} epochs "
          f"({report['cores']} cores):")
    for way, seconds in ways.items():
        print(f"  {way:<36} {seconds:7.1f} s")
    print(f"  (the cluster's start, {report['cluster_start_seconds']:.1f} s, not counted)\n"
          f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
