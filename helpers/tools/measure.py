"""The timed steps behind ``helpers.tools.estimate``: run by ``estimate.in_subprocess``.

    python -m helpers.tools.measure [--notebooks 03_train_cnn,...] < GIVEN.json

reads {"parameters": {...}, "counts": {...} or null} on stdin and prints one line of JSON:
the estimate's text and the seconds of each notebook named. Its own process, so that
TensorFlow, the models it builds and their memory leave with it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from helpers import project
from helpers.tools import estimate


def measure_rates(parameters: dict, timed_models: tuple[str, ...] = ("cnn", "resnet50"),
                  images_timed: int = 1024) -> dict:
    """Images per second of training and prediction, and the seconds a ``fit`` spends on its
    graphs, of ``timed_models`` (notebook 3's CNN, ResNet50) at the profile's sizes, under the
    precision PRECISION gives here (about ``images_timed`` images of each, at least 4
    batches); the files' audit and decoding rates where the folder is local."""
    import keras
    import numpy as np
    import tensorflow as tf

    from helpers import devices, inference, models
    from helpers.tools import bench, notebooks

    precision = devices.configure_precision(parameters["PRECISION"])
    rates: dict = {"precision": precision,  # GPUs: what a local cluster shares out
                   "gpus": len(tf.config.list_physical_devices("GPU"))}

    def timed(build, size: int, batch: int, fine_tune_blocks: int | None = None,
              images_timed: int = images_timed) -> dict:
        steps = max(4, images_timed // batch)
        started = time.perf_counter()
        model = build()
        built = time.perf_counter() - started
        if fine_tune_blocks is not None:  # notebook 4's phase 2: the top blocks learn
            top = tuple(f"{block}_" for block in
                        models.RESNET50_BLOCKS[len(models.RESNET50_BLOCKS) - fine_tune_blocks:])
            freeze_batchnorm = parameters["RESNET_FREEZE_BATCHNORM"]
            for layer in model.layers[1].layers:  # the base, after the preprocessing
                layer.trainable = layer.name.startswith(top) and not (
                    freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization))
        model.compile(optimizer=keras.optimizers.AdamW(1e-4),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        images = np.random.default_rng(0).uniform(0, 255, (batch * steps, size, size, 3))
        labels = np.arange(batch * steps) % 8
        data = bench.in_memory_batches(images.astype("float32"), labels, batch)
        started = time.perf_counter()
        model.fit(data.take(2), validation_data=data.take(1), epochs=1, verbose=0)
        first = time.perf_counter() - started
        started = time.perf_counter()
        model.fit(data, epochs=1, verbose=0)
        step = (time.perf_counter() - started) / steps
        model.predict(images[:batch], batch_size=batch, verbose=0)  # its graph apart
        started = time.perf_counter()
        model.predict(images, batch_size=batch, verbose=0)
        predict = (time.perf_counter() - started) / len(images)
        # Notebook 5 predicts through one traced forward pass per batch
        # (``inference.LoadedModel.step``), without Keras's predict loop around it.
        forward = tf.function(lambda batch_images: model(batch_images, training=False))
        tensors = tf.constant(images, tf.float32)
        size = min(inference.PREDICT_BATCH_SIZE, len(images))
        forward(tensors[:size])  # its graph apart
        started = time.perf_counter()
        for start in range(0, len(images) - size + 1, size):
            forward(tensors[start:start + size]).numpy()
        infer = (time.perf_counter() - started) / (len(images) // size * size)
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            model.save(Path(folder) / "model.keras")
            saved = time.perf_counter() - started
        return {"train": batch / step, "predict": 1 / predict, "infer": 1 / infer,
                "build": built, "save": saved,
                "overhead": max(0.0, first - 2 * step - batch * predict)}

    if "cnn" in timed_models:
        cnn_size = parameters["CNN_IMAGE_SIZE"]
        rates["cnn"] = timed(lambda: notebooks.baseline_cnn(cnn_size, seed=0), cnn_size,
                             parameters["CNN_BATCH_SIZE"])
    if "resnet50" in timed_models:
        resnet_size = parameters["RESNET_IMAGE_SIZE"]
        rates["resnet50"] = timed(lambda: bench.trainable_resnet50(resnet_size), resnet_size,
                                  parameters["RESNET_BATCH_SIZE"],
                                  parameters["RESNET_FINE_TUNE_BLOCKS"], images_timed // 4)
    startup = startup_seconds()
    if startup is not None:  # else the estimate counts the reference machine's start-up
        rates["startup"] = startup
    rates["audit"], rates["decode"] = estimate.DEFAULT_AUDIT_RATE, estimate.DEFAULT_DECODE_RATE
    if parameters.get("DATA_SOURCE") == "local" and parameters.get("DATA_DIR"):
        size = parameters.get("CNN_IMAGE_SIZE") or parameters.get("RESNET_IMAGE_SIZE") or 64
        rates.update(file_rates(project.resolve(parameters["DATA_DIR"]), size))
    return rates


def startup_seconds(timeout: float = 120) -> float | None:
    """Seconds a fresh Python takes to import what every notebook's setup cell imports
    (TensorFlow, Keras, pandas, matplotlib and seaborn, through ``helpers.plots`` and
    ``helpers.runtime``), their files warm as the kernels after the first find them: the
    one-core speed that sets a notebook's time outside its models and files. None where that
    Python fails or takes over ``timeout`` seconds."""
    from helpers import plots, runtime  # noqa: F401 - read once here, so the files are warm

    command = [sys.executable, "-c", "import helpers.plots, helpers.runtime"]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=project.ROOT, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return None if done.returncode else time.perf_counter() - started


def file_rates(data_dir: Path, size: int, sample: int = 200) -> dict[str, float]:
    """Files per second of the audit (on its threads, as notebook 1 runs it) and of decoding
    at ``size`` px, timed on ``sample`` image files spread over ``data_dir``'s folders; empty
    where it holds none. Before notebook 1 the files are as cold as the audit will find them."""
    import tensorflow as tf

    from helpers import audit, images

    paths = sorted(path for path in data_dir.rglob("*")
                   if path.suffix.lower() in estimate.IMAGE_SUFFIXES)
    paths = paths[::max(1, len(paths) // sample)][:sample]  # every class, not the first one's
    if not paths:
        return {}
    started = time.perf_counter()
    audit.inspect_files(paths)
    audit_rate = len(paths) / (time.perf_counter() - started)
    started = time.perf_counter()
    for path in paths:
        images.decode_and_resize(tf.io.read_file(str(path)), size)
    return {"audit": audit_rate, "decode": len(paths) / (time.perf_counter() - started)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.tools.measure", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebooks", default=",".join(project.NOTEBOOKS),
                        help="the notebooks to estimate, comma-separated")
    args = parser.parse_args(argv)
    notebooks = tuple(args.notebooks.split(","))
    unknown = sorted(set(notebooks) - set(project.NOTEBOOKS))
    if unknown:
        parser.error(f"no notebook {unknown}; choose among {', '.join(project.NOTEBOOKS)}")
    given = json.load(sys.stdin)
    parameters = given["parameters"]
    counts = given.get("counts") or estimate.image_counts(parameters)
    timed_models = tuple(model for model in ("cnn", "resnet50")
                         if any(model in estimate.MODELS_OF.get(name, ()) for name in notebooks))
    rates = measure_rates(parameters, timed_models)
    seconds = estimate.notebook_seconds(parameters, counts, rates, notebooks)
    print(json.dumps({"text": estimate.describe(seconds, rates, counts, parameters),
                      "seconds": seconds}))
    return 0

if __name__ == "__main__":
    sys.exit(main())
