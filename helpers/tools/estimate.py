"""How long each notebook will take here, known before the wait.

    python -m helpers.tools.estimate --profile cpu [--data-dir DIR] [--set NAME=VALUE ...]

A few timed training and prediction steps of notebook 3's CNN and of ResNet50 at the
profile's image sizes, batch sizes and precision (``measure_rates``, about a minute on 2 CPU
cores: ResNet50's graphs take most of it), multiplied by the profile's counts of images,
epochs, seeds and runs (``notebook_seconds``, arithmetic only). ``helpers.study`` prints it
before the first notebook, run in a process of its own. Upper bounds where early stopping
may end a run sooner; a download is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from helpers import project
from helpers.split import SPLIT_FRACTIONS, SPLIT_NAMES

# The dataset's size where it is not on this machine yet (Kaggle's PBC: 17,092 images).
PBC_IMAGES = 17_092
# Seconds each notebook spends besides its models' steps (kernel start, imports, tables,
# figures), measured with the smoke profile on 2 cores.
NOTEBOOK_OVERHEAD = {"01_data": 4.0, "02_explore": 5.0, "03_train_cnn": 8.0,
                     "04_train_resnet50": 8.0, "05_compare": 15.0}
# Files per second where the folder is not at hand to measure (a Kaggle download): the audit
# (its hash and header check, on every core) and a full decode, 2-core figures of
# docs/performance.md.
DEFAULT_AUDIT_RATE = 3000.0
DEFAULT_DECODE_RATE = 1000.0
# Views per image with test-time augmentation (the 8 dihedral views).
TTA_VIEWS = 8


def image_counts(parameters: dict) -> dict[str, int]:
    """Images per subset the profile will split: counted in a local folder, drawn for
    synthetic data, else the published dataset's size."""
    source = parameters.get("DATA_SOURCE")
    if source == "synthetic":
        total = 8 * int(parameters["SYNTHETIC_IMAGES_PER_CLASS"])
    elif source == "local" and parameters.get("DATA_DIR"):
        root = project.resolve(parameters["DATA_DIR"])
        total = sum(1 for path in root.rglob("*") if path.suffix.lower() in
                    (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"))
    else:
        total = PBC_IMAGES
    fractions = parameters.get("SPLIT_FRACTIONS") or SPLIT_FRACTIONS
    return {"all": total, **{name: int(total * fractions[name]) for name in SPLIT_NAMES}}


def notebook_seconds(parameters: dict, counts: dict[str, int], rates: dict) -> dict[str, float]:
    """Seconds of each notebook from the profile's ``parameters``, the split's ``counts`` and
    the measured ``rates`` (``measure_rates``); arithmetic only."""
    p, train, validation, test = parameters, counts["train"], counts["validation"], counts["test"]
    cnn, resnet, decode = rates["cnn"], rates["resnet50"], rates["decode"]

    def fit(model: dict, images: int, epochs: int, precise: int = 0,
            frozen: bool = False) -> float:
        """One ``fit``: building the model and its graphs, the first pass decoding the files,
        each epoch's training, recomputed BatchNorm statistics, validation, and the backup
        and checkpoint written after it. ``frozen``: ResNet50's phase 1, a forward pass of
        the base (about a prediction's rate) and a graph without its backward pass (counted
        as half the measured one)."""
        per_epoch = (images / (model["predict"] if frozen else model["train"])
                     + (precise + validation) / model["predict"] + 2 * model["save"])
        return (model["build"] + model["overhead"] / (2 if frozen else 1)
                + (images + validation) / decode
                + epochs * per_epoch)

    def capped(limit: int) -> int:
        return min(limit, train) if limit else train

    seconds = {name: overhead for name, overhead in NOTEBOOK_OVERHEAD.items()}
    seconds["01_data"] += counts["all"] / rates["audit"]
    seconds["02_explore"] += 8 * (p["COLOUR_SAMPLE_PER_CLASS"] + p["SAMPLES_PER_CLASS"]) / decode
    precise = p["CNN_PRECISE_BATCHNORM_IMAGES"]
    notebook_3 = sum(fit(cnn, capped(p["CNN_COMPARE_MAX_IMAGES"]), p["CNN_COMPARE_EPOCHS"],
                         precise) for _ in p["CNN_LR_STRATEGIES"])
    if p["CNN_BATCHNORM_DEMO"]:
        notebook_3 += fit(cnn, capped(p["CNN_DEMO_MAX_IMAGES"]), p["CNN_DEMO_EPOCHS"], precise)
    notebook_3 += p["CNN_SEEDS"] * fit(cnn, train, p["CNN_EPOCHS"], precise)
    # Each run's validation predictions, then the ensemble's (every seed on each image).
    scored = (len(p["CNN_LR_STRATEGIES"]) + bool(p["CNN_BATCHNORM_DEMO"])
              + p["CNN_SEEDS"] * (2 if p["CNN_SEEDS"] > 1 else 1))
    notebook_3 += scored * validation / cnn["predict"]
    seconds["03_train_cnn"] += notebook_3
    resnet_images = capped(p["RESNET_MAX_IMAGES"])
    precise = 0 if p["RESNET_FREEZE_BATCHNORM"] else p["RESNET_PRECISE_BATCHNORM_IMAGES"]
    notebook_4 = (fit(resnet, resnet_images, p["RESNET_FROZEN_EPOCHS"], frozen=True)
                  + fit(resnet, resnet_images, p["RESNET_FINE_TUNE_EPOCHS"], precise)
                  + validation / resnet["predict"])
    mistakes = p["RESNET_MISTAKES"]
    mistake_runs = 9 if mistakes == ["every"] else len(mistakes)  # notebook 4's MISTAKE_NAMES
    if mistake_runs:  # each: a phase 1 of its own (about half do) and the mistake's epochs
        mistake_images = capped(p["RESNET_MISTAKES_MAX_IMAGES"])
        notebook_4 += mistake_runs * (fit(resnet, mistake_images, p["RESNET_MISTAKES_EPOCHS"])
                                      + 0.5 * fit(resnet, mistake_images, 1, frozen=True))
    seconds["04_train_resnet50"] += notebook_4
    views = 1 + (TTA_VIEWS if p["TTA"] else 0)
    seeds = p["CNN_SEEDS"]
    # The test split: each model with its views, the ensemble (every seed), each seed, and
    # the resolution check (each model at two resolutions, read from the files again).
    notebook_5 = (test * views + (seeds if seeds > 1 else 0) * 2 * test) / cnn["predict"]
    notebook_5 += test * views / resnet["predict"]
    notebook_5 += 2 * test * (1 / cnn["predict"] + 1 / resnet["predict"]) + 4 * test / decode
    notebook_5 += cnn["overhead"] / 2 + resnet["overhead"] / 2  # the predict graphs
    seconds["05_compare"] += notebook_5
    return seconds


def measure_rates(parameters: dict, images_timed: int = 1024) -> dict:
    """Images per second of training and prediction, and the seconds a ``fit`` spends on its
    graphs, for notebook 3's CNN and for ResNet50 at the profile's sizes, under the precision
    PRECISION gives here (about ``images_timed`` images of each, at least 4 batches); the
    files' audit and decoding rates where the folder is local."""
    import keras
    import numpy as np
    import tensorflow as tf

    from helpers import devices, models
    from helpers.tools import bench, notebooks

    precision = devices.configure_precision(parameters["PRECISION"])
    rates: dict = {"precision": precision}

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
        data = tf.data.Dataset.from_tensor_slices((images.astype("float32"), labels)).batch(batch)
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
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            model.save(Path(folder) / "model.keras")
            saved = time.perf_counter() - started
        return {"train": batch / step, "predict": 1 / predict, "build": built, "save": saved,
                "overhead": max(0.0, first - 2 * step - batch * predict)}

    cnn_size = parameters["CNN_IMAGE_SIZE"]
    rates["cnn"] = timed(lambda: notebooks.baseline_cnn(cnn_size, seed=0), cnn_size,
                         parameters["CNN_BATCH_SIZE"])
    resnet_size = parameters["RESNET_IMAGE_SIZE"]
    rates["resnet50"] = timed(lambda: bench.trainable_resnet50(resnet_size), resnet_size,
                              parameters["RESNET_BATCH_SIZE"],
                              parameters["RESNET_FINE_TUNE_BLOCKS"], images_timed // 4)
    rates["audit"], rates["decode"] = DEFAULT_AUDIT_RATE, DEFAULT_DECODE_RATE
    if parameters.get("DATA_SOURCE") == "local" and parameters.get("DATA_DIR"):
        from helpers import audit, images

        paths = sorted(project.resolve(parameters["DATA_DIR"]).rglob("*.jpg"))[:200]
        if paths:
            started = time.perf_counter()
            for path in paths:
                audit.inspect_file(path)
            # The audit checks files on every core.
            rates["audit"] = len(paths) * (os.cpu_count() or 1) / (time.perf_counter() - started)
            started = time.perf_counter()
            for path in paths:
                images.decode_and_resize(tf.io.read_file(str(path)), cnn_size)
            rates["decode"] = len(paths) / (time.perf_counter() - started)
    return rates


def describe(seconds: dict[str, float], rates: dict, counts: dict[str, int]) -> str:
    """The estimate as the runner prints it: each notebook, the total, and the levers."""
    def minutes(value: float) -> str:
        return f"{value / 60:5.1f} min" if value >= 90 else f"{value:5.0f} s  "

    lines = [f"Expected time here ({rates['precision']}; {counts['train']:,} training, "
             f"{counts['validation']:,} validation, {counts['test']:,} test images; "
             f"CNN {rates['cnn']['train']:.0f} and ResNet50 {rates['resnet50']['train']:.0f} "
             "training images/s):"]
    lines += [f"  {name:<18} {minutes(value)}" for name, value in seconds.items()]
    lines.append(f"  {'in all':<18} {minutes(sum(seconds.values()))}  (upper bound: early "
                 "stopping may end runs sooner; a download is not counted)")
    lines.append("Shorter: --set CNN_SEEDS=1, CNN_EPOCHS, RESNET_FINE_TUNE_EPOCHS, "
                 "RESNET_MAX_IMAGES, TTA=false, CNN_BATCHNORM_DEMO=false, or a GPU.")
    return "\n".join(lines)


def estimate(parameters: dict) -> str:
    """Measure here and describe: what the runner prints."""
    rates = measure_rates(parameters)
    counts = image_counts(parameters)
    return describe(notebook_seconds(parameters, counts, rates), rates, counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.tools.estimate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", help="parameter profile, e.g. cpu")
    parser.add_argument("--data-dir", help="the local folder of images the study would use")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one parameter of the profile (repeatable)")
    parser.add_argument("--parameters-json", help=argparse.SUPPRESS)  # from the runner
    args = parser.parse_args(argv)
    if args.parameters_json:
        parameters = json.loads(args.parameters_json)
    else:
        from helpers.tools import study

        if not args.profile:
            parser.error("give --profile")
        _, parameters = study.configured_parameters(args.profile, args.data_dir, args.set)
    print(estimate(parameters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
