"""Benchmarks: the project's speed as a ratio to the machine's limit, measured in one run.

    python -m helpers.tools.bench --data-dir DIR [--sample-dir DIR] --out FILE [--runs 3]
    python -m helpers.tools.bench --data-dir DIR --out FILE --only precision
    python -m helpers.tools.bench --data-dir DIR --out FILE.csv --layer-profile

Each figure sets the project's code against the simplest code that does the same work on
the same files in the same process (the limit), measured in turns, and reports images/s of
both (median, min, max of ``--runs`` turns) and their ratio (the median of the per-turn
ratios). The JSON keys include
``pipeline_first_pass_ratio``, ``pipeline_cached_ratio``, ``train_ratio_cnn``,
``inference_ratio``, ``audit_split_seconds``, and bfloat16 against float32 for the same model
on the same batches: ``bf16_train_ratio_cnn``, ``bf16_inference_ratio_cnn``,
``bf16_train_ratio_resnet50``, ``bf16_inference_ratio_resnet50``, with each bfloat16 training
step's FLOP rate as a share of the machine's bfloat16 convolution rate
(``bf16_train_flop_share_cnn``, ``..._resnet50``). Inference from files is also set against
decoding then predicting one after the other (``inference_ratio_to_decode_then_predict``):
on 2 cores both share the CPUs. Absolute numbers belong to the machine
(recorded under ``machine``); the ratios are the claim.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from helpers import files
from helpers.errors import DataError
from helpers.tools import outputs

BATCH_SIZE = 64
IMAGE_SIZE = 64
RESNET_IMAGE_SIZE = 224  # the precision figures for ResNet50: its size with ImageNet weights
CROP_FRACTION = 0.7  # the CNN's CPU configuration


def machine() -> dict:
    """What the figures were measured on."""
    import tensorflow as tf

    from helpers.devices import device_names

    cpu_model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu_model = names[0] if names else cpu_model
    return {"cpu": cpu_model, "cores": os.cpu_count(), "tensorflow": tf.__version__,
            "devices": device_names(), "python": platform.python_version(),
            "platform": platform.platform()}


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def side_by_side(project: Callable[[], float], limit: Callable[[], float], runs: int) -> dict:
    """Run the project's and the limit's measurement (each returns images/s) in turns,
    ``runs`` times each, so a machine that speeds up or slows down (shared cloud cores do)
    affects both alike. Returns both summaries and the paired ratio."""
    project_values, limit_values = [], []
    for _ in range(runs):
        project_values.append(project())
        limit_values.append(limit())
    return {"project": summary(project_values), "limit": summary(limit_values),
            "ratio": paired_ratio(project_values, limit_values)}


def paired_ratio(project_values: list[float], limit_values: list[float]) -> float:
    """Median over turns of project/limit, each pair measured back to back: robust to the
    machine changing speed between turns, which the ratio of two medians is not."""
    return statistics.median(p / q for p, q in zip(project_values, limit_values, strict=True))


def images_per_second(iterate: Callable[[], int]) -> float:
    """Images/s of one call of ``iterate``, which returns how many images it produced."""
    started = time.perf_counter()
    count = iterate()
    return count / (time.perf_counter() - started)


def fit_one_epoch(model, dataset, n_images: int) -> int:
    """Train ``model`` for one epoch over ``dataset``; returns ``n_images`` for timing."""
    model.fit(dataset, verbose=0, shuffle=False)  # the pipeline shuffles
    return n_images


def count_images(dataset) -> int:
    """Iterate a dataset of batches to its end; the number of images seen."""
    return sum(int(batch[0].shape[0]) if isinstance(batch, tuple) else int(batch.shape[0])
               for batch in dataset)


def usable_images(data_dir: str | os.PathLike, limit: int = 0) -> tuple[pd.DataFrame, Path]:
    """The usable images of a folder (``scoring.labelled_images``) as a split-like frame
    (subset "bench", absolute paths), at most ``limit // 8`` per class when ``limit`` is set,
    and the folder holding the class folders."""
    from helpers import scoring

    # Absolute, so the frame's paths and the root cannot both carry a relative prefix.
    images, _, root = scoring.labelled_images(Path(data_dir).resolve())
    frame = images.assign(split="bench").sort_values("path").reset_index(drop=True)
    if limit:
        frame = frame.groupby("label").head(max(1, limit // 8)).reset_index(drop=True)
    return frame, root


def bare_decode_dataset(paths: list[str], image_size: int):
    """The limit for decoding: read, decode_jpeg, crop, resize, in parallel, nothing else."""
    import tensorflow as tf

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        image = tf.image.central_crop(image, CROP_FRACTION)
        return tf.image.resize(image, (image_size, image_size), antialias=True)

    return (tf.data.Dataset.from_tensor_slices(paths)
            .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
            .batch(BATCH_SIZE).prefetch(tf.data.AUTOTUNE))


def project_dataset(frame: pd.DataFrame, root: Path, cache, shuffle: bool = False,
                    image_size: int = IMAGE_SIZE):
    from helpers import pipeline

    return pipeline.make_dataset(frame, root, "bench", image_size=image_size,
                                 batch_size=BATCH_SIZE, cache=cache, shuffle=shuffle,
                                 crop_fraction=CROP_FRACTION)


def bench_first_pass(frame: pd.DataFrame, root: Path, runs: int) -> dict:
    """Decoding and resizing every image once: the project's pipeline against the bare loop."""
    paths = [str(root / path) for path in frame["path"]]
    for path in paths:  # read every file once, so neither side pays the disk
        Path(path).read_bytes()
    return {"images": len(paths), **side_by_side(
        lambda: images_per_second(
            lambda: count_images(project_dataset(frame, root, cache=None))),
        lambda: images_per_second(
            lambda: count_images(bare_decode_dataset(paths, IMAGE_SIZE))), runs)}


def bench_cached(frame: pd.DataFrame, root: Path, runs: int) -> dict:
    """Epochs after the first: the project's memory cache against tensors already in memory."""
    import tensorflow as tf

    dataset = project_dataset(frame, root, cache="memory")
    count_images(dataset)  # fills the cache
    images, labels = dataset_arrays(dataset)
    images = images.astype(np.uint8)
    in_memory = (tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH_SIZE)
                 .map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(tf.data.AUTOTUNE))
    return {"images": len(images), **side_by_side(
        lambda: images_per_second(lambda: count_images(dataset)),
        lambda: images_per_second(lambda: count_images(in_memory)), runs)}


def bench_training(frame: pd.DataFrame, root: Path, runs: int, build: Callable,
                   image_size: int) -> dict:
    """Steady-state training images/s fed by the project's pipeline against in-memory batches
    of the same images; the first epoch's overhead (tracing, filling the cache) apart."""
    import keras
    import tensorflow as tf

    dataset = project_dataset(frame, root, cache="memory", shuffle=True, image_size=image_size)
    model = build()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss="sparse_categorical_crossentropy")
    first = images_per_second(lambda: fit_one_epoch(model, dataset, len(frame)))
    images, labels = dataset_arrays(dataset)
    in_memory = (tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH_SIZE)
                 .prefetch(tf.data.AUTOTUNE))
    result = side_by_side(
        lambda: images_per_second(lambda: fit_one_epoch(model, dataset, len(frame))),
        lambda: images_per_second(lambda: fit_one_epoch(model, in_memory, len(frame))), runs)
    return {"images": len(frame), "image_size": image_size, **result,
            "first_epoch_images_per_second": first,
            # How many times slower the first epoch is (tracing, filling the cache).
            "first_epoch_slowdown": result["project"]["median"] / first}


def bench_inference(frame: pd.DataFrame, root: Path, runs: int, model_path: str | None) -> dict:
    """``helpers.inference`` (what ``helpers.evaluate`` runs) over image files against
    ``model.predict`` on the same images already decoded in memory."""
    from helpers import inference
    from helpers.tools import notebooks

    if model_path is None:  # the speed does not depend on the weights
        model_path = Path(tempfile.mkdtemp(prefix="bench-")) / "cnn.keras"
        notebooks.baseline_cnn(IMAGE_SIZE, seed=0).save(model_path)
        inference.write_sidecar(model_path, label="Baseline CNN", image_size=IMAGE_SIZE,
                                resize_method="bilinear", crop_fraction=CROP_FRACTION)
    loaded = inference.load_model(model_path)
    paths = [root / path for path in frame["path"]]
    images = np.concatenate([batch.numpy() for batch in inference.image_dataset(paths, loaded)])
    loaded.model.predict(images[:BATCH_SIZE], verbose=0)
    inference.predict_probabilities(loaded, paths[:BATCH_SIZE], progress=False)
    result = side_by_side(
        lambda: images_per_second(
            lambda: len(inference.predict_probabilities(loaded, paths, progress=False))),
        lambda: images_per_second(
            lambda: len(loaded.model.predict(images, batch_size=BATCH_SIZE, verbose=0))),
        runs)
    # On 2 cores decoding and the model share the CPUs: the honest limit of a file-to-answer
    # path is decoding then predicting, one after the other.
    decode = summary([images_per_second(lambda: count_images(
        inference.image_dataset(paths, loaded))) for _ in range(runs)])
    serial = 1 / (1 / decode["median"] + 1 / result["limit"]["median"])
    return {"images": len(paths), "model": str(model_path), **result,
            "decode_only": decode, "decode_then_predict_images_per_second": serial,
            "ratio_to_decode_then_predict": result["project"]["median"] / serial}


def cached_arrays(frame: pd.DataFrame, root: Path, image_size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The images of ``frame`` decoded and resized by the project's pipeline, and labels."""
    return dataset_arrays(project_dataset(frame, root, cache=None, image_size=image_size))


def dataset_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    """Every (images, labels) batch of a finite dataset, concatenated into two arrays."""
    images, labels = (np.concatenate(parts) for parts in zip(
        *[(x.numpy(), y.numpy()) for x, y in dataset], strict=True))
    return images, labels


def built_in(policy: str, build: Callable):
    """A model built (and compiled for training) under the Keras dtype policy ``policy``."""
    import keras

    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss="sparse_categorical_crossentropy")
    return model


def in_memory_batches(images: np.ndarray, labels: np.ndarray, batch_size: int = BATCH_SIZE):
    import tensorflow as tf

    from helpers import pipeline  # the study's options: timed as the study trains

    return (tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
            .with_options(pipeline.dataset_options(deterministic=True))
            .prefetch(tf.data.AUTOTUNE))


def bench_precision(images: np.ndarray, labels: np.ndarray, runs: int, build: Callable,
                    batch_size: int = BATCH_SIZE) -> dict:
    """The same model in mixed bfloat16 against float32: training and inference images/s on
    the same in-memory batches, in turns (``project`` is bfloat16, ``limit`` float32, so the
    ratio is bfloat16's speed-up)."""
    batches = in_memory_batches(images, labels, batch_size)
    bfloat16, float32 = built_in("mixed_bfloat16", build), built_in("float32", build)
    for model in (bfloat16, float32):  # tracing and one-off costs apart
        fit_one_epoch(model, batches.take(2), 2 * batch_size)
        model.predict(images[:batch_size], verbose=0)
    n_images = len(images)

    def predict(model) -> int:
        return len(model.predict(images, batch_size=batch_size, verbose=0))

    training = side_by_side(
        lambda: images_per_second(lambda: fit_one_epoch(bfloat16, batches, n_images)),
        lambda: images_per_second(lambda: fit_one_epoch(float32, batches, n_images)), runs)
    inference = side_by_side(lambda: images_per_second(lambda: predict(bfloat16)),
                             lambda: images_per_second(lambda: predict(float32)), runs)
    return {"images": n_images, "image_size": int(images.shape[1]), "batch_size": batch_size,
            "jit_compile": bool(bfloat16.jit_compile), "training": training,
            "inference": inference,
            "training_flops_per_image": 3 * forward_flops(float32)}


def profile_layers(build: Callable, image_size: int, batch_size: int = BATCH_SIZE,
                   repeats: int = 10) -> pd.DataFrame:
    """Milliseconds per batch of each layer of the model ``build`` makes, alone, forward and
    forward + backward (gradients of the input and the layer's weights), in float32 and in
    mixed bfloat16, without XLA: where a training step spends its time. ``build`` takes no
    argument and makes a functional model whose layers' inputs have known shapes."""
    import keras
    import tensorflow as tf

    def milliseconds(function, inputs) -> float:
        function(inputs)  # tracing apart
        started = time.perf_counter()
        for _ in range(repeats):
            outputs = function(inputs)
        tf.nest.map_structure(lambda tensor: tensor.numpy(), outputs)
        return (time.perf_counter() - started) / repeats * 1000

    rows: dict[str, dict] = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            model = build()
        finally:
            keras.mixed_precision.set_global_policy("float32")
        for layer in model.layers[1:]:
            shape = (batch_size, *layer.input.shape[1:])
            inputs = tf.cast(tf.random.uniform(shape, maxval=255.0), layer.compute_dtype)

            @tf.function(jit_compile=False)
            def forward(inputs, layer=layer):
                return layer(inputs, training=True)

            @tf.function(jit_compile=False)
            def forward_backward(inputs, layer=layer):
                with tf.GradientTape() as tape:
                    tape.watch(inputs)
                    loss = tf.reduce_sum(tf.cast(layer(inputs, training=True), tf.float32))
                return tape.gradient(loss, [inputs, *layer.trainable_weights])

            row = rows.setdefault(layer.name, {"type": type(layer).__name__})
            short = "float32" if policy == "float32" else "bfloat16"
            row[f"{short} forward ms"] = milliseconds(forward, inputs)
            row[f"{short} forward+backward ms"] = milliseconds(forward_backward, inputs)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.loc["total"] = table.drop(columns="type").sum()
    table.loc["total", "type"] = ""
    return table


def precision_figures(subset: pd.DataFrame, root: Path, runs: int, resnet_size: int) -> dict:
    """bfloat16 against float32 for the CNN (64 px) and a trainable ResNet50, the machine's
    convolution rates, and each bfloat16 training step's share of the bfloat16 rate."""
    from helpers.tools import notebooks

    report = {}
    images, labels = cached_arrays(subset, root, IMAGE_SIZE)
    report["precision_cnn"] = bench_precision(
        images, labels, runs, lambda: notebooks.baseline_cnn(IMAGE_SIZE, seed=0))
    resnet_images, resnet_labels = cached_arrays(
        subset.groupby("label").head(8).reset_index(drop=True), root, resnet_size)
    report["precision_resnet50"] = bench_precision(
        resnet_images, resnet_labels, runs, lambda: trainable_resnet50(resnet_size),
        batch_size=16)
    report["conv_gflops"] = {dtype: conv_flop_rate(dtype) / 1e9
                             for dtype in ("float32", "bfloat16")}
    for model in ("cnn", "resnet50"):
        item = report[f"precision_{model}"]
        report[f"bf16_train_ratio_{model}"] = item["training"]["ratio"]
        report[f"bf16_inference_ratio_{model}"] = item["inference"]["ratio"]
        # The training step's FLOP rate in bfloat16 as a share of the machine's bfloat16
        # convolution rate: how far the step is from what the hardware does.
        report[f"bf16_train_flop_share_{model}"] = (
            item["training"]["project"]["median"] * item["training_flops_per_image"]
            / (report["conv_gflops"]["bfloat16"] * 1e9))
    return report


def float32_figures(subset: pd.DataFrame, root: Path, runs: int) -> dict:
    """float32 training images/s of the CNN and a fully trainable ResNet50 at 64 px, with and
    without XLA (``jit_compile``), and each as a share of the float32 convolution rate: where
    a machine without bfloat16 units stands (run it under ``ONEDNN_MAX_CPU_ISA=AVX2`` too)."""
    import keras

    from helpers.tools import notebooks

    report = {"conv_gflops_float32": conv_flop_rate("float32") / 1e9}
    images, labels = cached_arrays(subset, root, IMAGE_SIZE)
    for model_name, build, count, batch_size in [
            ("cnn", lambda: notebooks.baseline_cnn(IMAGE_SIZE, seed=0), len(images), BATCH_SIZE),
            ("resnet50", lambda: trainable_resnet50(IMAGE_SIZE), min(256, len(images)), 32)]:
        batches = in_memory_batches(images[:count], labels[:count], batch_size)
        for jit_compile in (False, True):
            model = build()
            model.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=jit_compile,
                          loss="sparse_categorical_crossentropy")
            fit_one_epoch(model, batches.take(2), 2 * batch_size)  # tracing apart
            rates = []
            for _ in range(runs):
                started = time.perf_counter()
                fit_one_epoch(model, batches, count)
                rates.append(count / (time.perf_counter() - started))
            rate = statistics.median(rates)
            report[f"{model_name}_jit_{str(jit_compile).lower()}"] = {
                "images": count, "batch_size": batch_size, **summary(rates),
                "flop_share": rate * 3 * forward_flops(model)
                / (report["conv_gflops_float32"] * 1e9)}
    return report


def trainable_resnet50(image_size: int):
    """ResNet50 from random weights with every layer trainable (phase 2 at its widest)."""
    import keras

    from helpers import models

    return keras.Sequential([keras.Input((image_size, image_size, 3)),
                             models.ResNetPreprocess(),
                             keras.applications.ResNet50(include_top=False, weights=None,
                                                         input_shape=(image_size, image_size, 3)),
                             keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(8, activation="softmax", dtype="float32")])


def forward_flops(model) -> float:
    """Multiply-adds x 2 of one image's forward pass through the convolutions and dense
    layers (the rest is negligible); a training step costs about 3 times this."""
    import keras

    total = 0.0

    def visit(layer):
        nonlocal total
        if isinstance(layer, keras.layers.Conv2D):
            height, width, channels_out = layer.output.shape[1:]
            kernel_height, kernel_width, channels_in, _ = layer.kernel.shape
            total += 2.0 * height * width * channels_out * kernel_height * kernel_width * \
                channels_in
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * layer.kernel.shape[0] * layer.kernel.shape[1]
        for inner in getattr(layer, "layers", []):
            visit(inner)

    for layer in model.layers:
        visit(layer)
    return total


def conv_flop_rate(policy_dtype: str, repeats: int = 20) -> float:
    """FLOP/s of a 3x3 convolution of 64 channels on 64x64 maps, batch 64, forward only: what
    this machine's convolution kernels reach in ``policy_dtype`` (the limit for a CNN)."""
    import tensorflow as tf

    dtype = tf.bfloat16 if policy_dtype == "bfloat16" else tf.float32
    inputs = tf.cast(tf.random.normal((64, 64, 64, 64)), dtype)
    kernel = tf.cast(tf.random.normal((3, 3, 64, 64)), dtype)
    convolve = tf.function(lambda x: tf.nn.conv2d(x, kernel, 1, "SAME"), jit_compile=False)
    convolve(inputs).numpy()
    started = time.perf_counter()
    for _ in range(repeats):
        result = convolve(inputs)
    result.numpy()
    seconds = (time.perf_counter() - started) / repeats
    return 2.0 * 64 * 64 * 64 * 64 * 9 * 64 / seconds


def frozen_resnet50(image_size: int):
    """Phase 1 of notebook 4's ResNet50, from random weights (the speed does not depend on
    them): preprocessing, the frozen base, a softmax head."""
    import keras

    from helpers import models

    base = keras.applications.ResNet50(include_top=False, weights=None,
                                                         input_shape=(image_size, image_size, 3))
    base.trainable = False
    return keras.Sequential([keras.Input((image_size, image_size, 3)),
                             models.ResNetPreprocess(), base,
                             keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(8, activation="softmax")])


def _audit_and_split(data_dir: str) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of auditing and splitting, in a fresh process."""
    from helpers import audit, split
    from helpers.locate import find_data_root

    started = time.perf_counter()
    result = audit.audit(find_data_root(data_dir))
    kept, _ = split.select_images(result.index)
    split.assign_splits(kept, seed=split.DEFAULT_SEED)
    seconds = time.perf_counter() - started
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def resident_bytes() -> int:
    """This process's resident memory now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cache_memory(data_dir: str, image_size: int, limit: int) -> tuple[int, int, int]:
    """(images, resident memory before, after) filling a memory cache, in a fresh process."""
    frame, root = usable_images(data_dir, limit)
    dataset = project_dataset(frame, root, cache="memory", image_size=image_size)
    count_images(dataset.take(1))  # builds the graph; its memory is not the cache's
    before = resident_bytes()
    count_images(dataset)  # fills the cache, which lives as long as ``dataset``
    return len(frame), before, resident_bytes()


def in_fresh_process(function: Callable, *arguments):
    """Run ``function`` in a new interpreter, so its peak memory is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *arguments).result()


def bench_memory(data_dir: str, limit: int, sizes=(64, 128, 224)) -> dict:
    """Resident memory growth of a memory cache per image size, against N x size^2 x 3."""
    results = {}
    for size in sizes:
        n_images, before, after = in_fresh_process(_cache_memory, data_dir, size, limit)
        expected = n_images * size * size * 3
        results[str(size)] = {"images": n_images, "rss_growth_bytes": after - before,
                              "uint8_bytes": expected,
                              "growth_over_uint8": (after - before) / expected}
    return results


def format_table(report: dict) -> str:
    lines = [f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
             f"TensorFlow {report['machine']['tensorflow']}",
             f"{'benchmark':<34}{'project img/s':>14}{'limit img/s':>13}{'ratio':>8}"]
    for key, title in [("pipeline_first_pass", "pipeline, first pass (dev)"),
                       ("pipeline_first_pass_fullres", "pipeline, first pass (full res)"),
                       ("pipeline_cached", "pipeline, cached epochs"),
                       ("train_cnn", "training, CNN 64 px"),
                       ("train_resnet50", "training, ResNet50 64 px, frozen"),
                       ("inference", "inference (helpers.evaluate)"),
                       ("inference_fullres", "inference, full-resolution files")]:
        if key in report:
            item = report[key]
            lines.append(f"{title:<34}{item['project']['median']:>14,.0f}"
                         f"{item['limit']['median']:>13,.0f}{item['ratio']:>8.3f}")
    for model, title in [("cnn", f"CNN {IMAGE_SIZE} px"),
                         ("resnet50", f"ResNet50 {report['precision_resnet50']['image_size']}"
                                      " px, all trainable")]:
        item = report.get(f"precision_{model}")
        if item:
            for step in ("training", "inference"):
                lines.append(f"{'bfloat16 / float32, ' + step + ', ' + title:<58}"
                             f"{item[step]['project']['median']:>8,.1f}"
                             f"{item[step]['limit']['median']:>8,.1f}"
                             f"{item[step]['ratio']:>7.2f}")
            share = report[f"bf16_train_flop_share_{model}"]
            lines.append(f"  bfloat16 training step at {share:.0%} of the bfloat16 "
                         f"convolution rate ({report['conv_gflops']['bfloat16']:,.0f} "
                         "GFLOP/s; float32 "
                         f"{report['conv_gflops']['float32']:,.0f})")
    for key, title in [("inference", "pbc_dev"), ("inference_fullres", "full resolution")]:
        if key in report:
            item = report[key]
            lines.append(f"inference from files, {title}: decoding alone "
                         f"{item['decode_only']['median']:,.0f} img/s; decode then predict "
                         f"{item['decode_then_predict_images_per_second']:,.0f} img/s, "
                         f"ratio to that {item['ratio_to_decode_then_predict']:.2f}")
    if "audit_split_seconds" in report:
        lines.append(f"audit + split: {report['audit_split_seconds']:.1f} s, peak RSS "
                     f"{report['audit_split_peak_rss_bytes'] / 2**20:,.0f} MiB")
    for size, item in report.get("memory_cache", {}).items():
        lines.append(f"memory cache at {size} px: {item['rss_growth_bytes'] / 2**20:,.0f} MiB "
                     f"for {item['images']} images ({item['growth_over_uint8']:.2f} x "
                     "images x size^2 x 3 bytes)")
    float32 = report.get("float32")
    if float32:
        lines.append(f"float32 convolution rate {float32['conv_gflops_float32']:,.0f} GFLOP/s; "
                     "training images/s (share of it):")
        for key, item in float32.items():
            if key != "conv_gflops_float32":
                lines.append(f"  {key:<22}{item['median']:>8,.1f}  ({item['flop_share']:.2f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="e.g. ../shared/data/pbc_dev")
    parser.add_argument("--sample-dir", help="full-resolution originals, e.g. "
                        "../shared/data/pbc_fullres_sample")
    parser.add_argument("--out", required=True, help="JSON report")
    parser.add_argument("--runs", type=int, default=3, help="repeats per figure (median)")
    parser.add_argument("--images", type=int, default=2048,
                        help="images for the training and memory figures")
    parser.add_argument("--resnet-size", type=int, default=RESNET_IMAGE_SIZE,
                        help="image size of the ResNet50 precision figures (default 224)")
    parser.add_argument("--model", help="saved .keras model for the inference figure "
                        "(default: an untrained CNN; speed does not depend on weights)")
    parser.add_argument("--only", choices=["precision", "float32"],
                        help="measure only these figures (precision: bfloat16 against float32; "
                        "float32: its training rates, with and without XLA)")
    parser.add_argument("--layer-profile", action="store_true",
                        help="only print where the CNN's training step spends its time, per "
                        "layer, in float32 and bfloat16 (nothing else is measured)")
    args = parser.parse_args(argv)
    try:  # before the minutes of work, not after
        inputs = [folder for folder in (args.data_dir, getattr(args, "sample_dir", None))
                  if folder]
        outputs.check_output_path(args.out, ".csv" if args.layer_profile else ".json",
                                  input_folders=inputs)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    from helpers.tools import notebooks

    if args.layer_profile:
        table = profile_layers(lambda: notebooks.baseline_cnn(IMAGE_SIZE, augment=False, seed=0),
                               IMAGE_SIZE)
        with pd.option_context("display.width", 200, "display.max_rows", 100):
            print(table.round(2).to_string())
        by_type = table.drop(index="total").groupby("type").sum()
        print("\nBy layer type (forward+backward, ms per batch of "
              f"{BATCH_SIZE}):\n" + by_type.filter(like="backward").round(1).to_string())
        files.write_text_atomically(table.to_csv(), args.out)
        return 0

    report = {"machine": machine(), "batch_size": BATCH_SIZE, "image_size": IMAGE_SIZE}
    if args.only:
        frame, root = usable_images(args.data_dir)
        subset = frame.groupby("label").head(args.images // 8).reset_index(drop=True)
        if args.only == "float32":
            report["float32"] = float32_figures(subset, root, args.runs)
        else:
            report.update(precision_figures(subset, root, args.runs, args.resnet_size))
        return write_report(report, args.out)
    seconds, peak = in_fresh_process(_audit_and_split, args.data_dir)
    report.update(audit_split_seconds=seconds, audit_split_peak_rss_bytes=peak)
    frame, root = usable_images(args.data_dir)
    subset = frame.groupby("label").head(args.images // 8).reset_index(drop=True)
    report["pipeline_first_pass"] = bench_first_pass(frame, root, args.runs)
    if args.sample_dir:
        sample, sample_root = usable_images(args.sample_dir)
        report["pipeline_first_pass_fullres"] = bench_first_pass(sample, sample_root,
                                                                 args.runs)
    report["pipeline_cached"] = bench_cached(frame, root, args.runs)
    report["train_cnn"] = bench_training(
        subset, root, args.runs, lambda: notebooks.baseline_cnn(IMAGE_SIZE, seed=0), IMAGE_SIZE)
    small = subset.groupby("label").head(32).reset_index(drop=True)
    report["train_resnet50"] = bench_training(
        small, root, args.runs, lambda: frozen_resnet50(IMAGE_SIZE), IMAGE_SIZE)
    report["inference"] = bench_inference(frame, root, args.runs, args.model)
    if args.sample_dir:
        report["inference_fullres"] = bench_inference(sample, sample_root, args.runs,
                                                      args.model)
        report["inference_fullres_ratio"] = report["inference_fullres"]["ratio"]
    report["inference_ratio_to_decode_then_predict"] = (
        report["inference"]["ratio_to_decode_then_predict"])
    report.update(precision_figures(subset, root, args.runs, args.resnet_size))
    report["memory_cache"] = bench_memory(args.data_dir, args.images)
    for key in ("pipeline_first_pass", "pipeline_cached", "inference"):
        report[f"{key}_ratio"] = report[key]["ratio"]
    report["train_ratio_cnn"] = report["train_cnn"]["ratio"]
    report["train_ratio_resnet50"] = report["train_resnet50"]["ratio"]
    return write_report(report, args.out)


def write_report(report: dict, out: str) -> int:
    """Write the JSON report, print its table; the exit status (0)."""
    files.write_json(report, out)
    print(format_table(report))
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
