"""How long each notebook will take here, known before the wait.

A few timed training and prediction steps of notebook 3's CNN and of ResNet50 at the
profile's image sizes, batch sizes and precision (``helpers.tools.measure``, about a minute on
2 CPU cores: ResNet50's graphs take most of it), multiplied by the profile's counts of images,
epochs, seeds and runs (``notebook_seconds``, arithmetic only). The measuring runs in a process
of its own (``in_subprocess``), so neither the runner nor a notebook's kernel holds its
models: ``helpers.study`` prints the estimate before the first notebook (``--estimate-only``:
and stops), and in Colab notebooks 3 and 4 print their own. A notebook's kernel start,
imports and figures are scaled by this machine's speed on one core
(``measure.startup_seconds``). Not a bound either way: the last two full cpu studies came
within 13% in each notebook of a minute or more, earlier ones took up to 17% longer
(docs/performance.md), and early stopping may end a run sooner; a download is not counted.
Under ``CLUSTER = "local:N"`` the trainings a notebook sends together are counted at once
(``cluster_shares``, ``at_once``); a scheduler's workers are not timed from here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import cluster, project, split

# The models whose steps each notebook's time needs measured.
MODELS_OF = {"03_train_cnn": ("cnn",), "04_train_resnet50": ("resnet50",),
             "05_compare": ("cnn", "resnet50")}
# The dataset's size where it is not on this machine yet (Kaggle's PBC: 17,092 images).
PBC_IMAGES = 17_092
# Seconds each notebook spends besides its models' steps and its files (kernel start, imports,
# tables, figures) where a fresh Python imports the notebooks' modules in REFERENCE_STARTUP
# seconds; elsewhere in proportion to the time measured there (``measure.startup_seconds``),
# since all of it runs on one core. Notebooks 1 and 2: their time outside the audit and the
# colour statistics in a real-data cpu run on the AMD EPYC (Zen 5) VM that measured
# REFERENCE_STARTUP, the kernels' imports warm. Notebooks 3 to 5: from the smoke profile on
# 2 cores of an earlier EPYC whose start-up was not measured, scaled alike.
NOTEBOOK_OVERHEAD = {"01_data": 4.5, "02_explore": 9.8, "03_train_cnn": 8.0,
                     "04_train_resnet50": 8.0, "05_compare": 15.0}
REFERENCE_STARTUP = 4.3
# Files per second where the folder is not at hand to measure (a Kaggle download): the audit
# (its hash and header check, on every core) and a full decode, 2-core figures of
# docs/performance.md.
DEFAULT_AUDIT_RATE = 3000.0
DEFAULT_DECODE_RATE = 1000.0
# What shortens each notebook most, as the estimate names it.
LEVERS = {"03_train_cnn": ("CNN_SEEDS=1", "CNN_EPOCHS", "CNN_BATCHNORM_DEMO=false"),
          "04_train_resnet50": ("RESNET_FINE_TUNE_EPOCHS", "RESNET_MAX_IMAGES",
                                "RESNET_MISTAKES=[]"),
          "05_compare": ("TTA=false",)}
# Files counted as images in a local folder (the audit then judges each by its content).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
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
        total = sum(1 for path in root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    else:
        total = PBC_IMAGES
    fractions = parameters.get("SPLIT_FRACTIONS") or split.SPLIT_FRACTIONS
    return {"all": total, **{name: int(total * fractions[name]) for name in split.SPLIT_NAMES}}


def cluster_shares(value: str, gpus: int = 0, cores: int | None = None
                   ) -> tuple[int, float] | None:
    """Under CLUSTER ``value`` here: how many trainings run at once, and how many times
    longer each takes than alone in the kernel; None for a scheduler's address (its workers
    are not timed here). A local cluster gives each worker a GPU of its own where there are GPUs,
    else an equal share of the cores, which it keeps when it trains alone
    (``cluster.local_worker_environment``)."""
    if not value:
        return 1, 1.0
    if not value.startswith(cluster.LOCAL):
        return None
    workers, cores = int(value.removeprefix(cluster.LOCAL)), cores or cluster.cores()
    if gpus:
        return min(workers, gpus), 1.0
    threads = max(1, cores // workers)
    # A worker alone has its threads' share of the cores; more workers than cores share them.
    return workers, max(cores / threads, float(workers))


def at_once(seconds: list[float], shares: tuple[int, float] | None) -> float:
    """Seconds of independent trainings (``seconds`` each, alone in the kernel) sent
    together by ``training.train_each``: the longest first to the least busy slot."""
    slots, slower = shares or (1, 1.0)
    busy = [0.0] * slots
    for one in sorted(seconds, reverse=True):
        busy[busy.index(min(busy))] += one * slower
    return max(busy, default=0.0)


def notebook_seconds(parameters: dict, counts: dict[str, int], rates: dict,
                     notebooks: tuple[str, ...] = project.NOTEBOOKS) -> dict[str, float]:
    """Seconds of each of ``notebooks`` from the profile's ``parameters`` (those the
    notebooks declare), the split's ``counts`` and the measured ``rates``
    (``measure.measure_rates``, with the models ``MODELS_OF`` names); arithmetic only."""
    p, train, validation, test = parameters, counts["train"], counts["validation"], counts["test"]
    cnn, resnet, decode = rates.get("cnn"), rates.get("resnet50"), rates["decode"]

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

    # Trainings sent together run at once where CLUSTER is set (``at_once``).
    shares = cluster_shares(p.get("CLUSTER", ""), rates.get("gpus", 0))

    # Kernel starts, imports and figures run as fast as one core here (``REFERENCE_STARTUP``).
    one_core = rates.get("startup", REFERENCE_STARTUP) / REFERENCE_STARTUP
    seconds = {name: NOTEBOOK_OVERHEAD[name] * one_core for name in notebooks}
    if "01_data" in seconds:
        seconds["01_data"] += counts["all"] / rates["audit"]
    if "02_explore" in seconds:
        seconds["02_explore"] += (8 * (p["COLOUR_SAMPLE_PER_CLASS"] + p["SAMPLES_PER_CLASS"])
                                  / decode)
    if "03_train_cnn" in seconds:
        precise = p["CNN_PRECISE_BATCHNORM_IMAGES"]
        # Three sends of train_each: the strategies, the demonstration, the seeds.
        notebook_3 = (at_once([fit(cnn, capped(p["CNN_COMPARE_MAX_IMAGES"]),
                                   p["CNN_COMPARE_EPOCHS"], precise)] * len(p["CNN_LR_STRATEGIES"]),
                              shares)
                      + at_once([fit(cnn, capped(p["CNN_DEMO_MAX_IMAGES"]), p["CNN_DEMO_EPOCHS"],
                                     precise)] * bool(p["CNN_BATCHNORM_DEMO"]), shares)
                      + at_once([fit(cnn, train, p["CNN_EPOCHS"], precise)] * p["CNN_SEEDS"],
                                shares))
        # Each run's validation predictions, then the ensemble's (every seed on each image).
        scored = (len(p["CNN_LR_STRATEGIES"]) + bool(p["CNN_BATCHNORM_DEMO"])
                  + p["CNN_SEEDS"] * (2 if p["CNN_SEEDS"] > 1 else 1))
        seconds["03_train_cnn"] += notebook_3 + scored * validation / cnn["predict"]
    if "04_train_resnet50" in seconds:
        resnet_images = capped(p["RESNET_MAX_IMAGES"])
        precise = 0 if p["RESNET_FREEZE_BATCHNORM"] else p["RESNET_PRECISE_BATCHNORM_IMAGES"]
        notebook_4 = (fit(resnet, resnet_images, p["RESNET_FROZEN_EPOCHS"], frozen=True)
                      + fit(resnet, resnet_images, p["RESNET_FINE_TUNE_EPOCHS"], precise)
                      + validation / resnet["predict"])
        mistakes = p["RESNET_MISTAKES"]
        mistake_runs = 9 if mistakes == ["every"] else len(mistakes)  # notebook 4's MISTAKE_NAMES
        if mistake_runs:  # each: a phase 1 of its own (about half do) and the mistake's epochs
            mistake_images = capped(p["RESNET_MISTAKES_MAX_IMAGES"])
            mistake = (fit(resnet, mistake_images, p["RESNET_MISTAKES_EPOCHS"])
                       + 0.5 * fit(resnet, mistake_images, 1, frozen=True))
            # The first alone (the others start from its phase 1), then the others together.
            notebook_4 += at_once([mistake], shares) + at_once([mistake] * (mistake_runs - 1),
                                                               shares)
        seconds["04_train_resnet50"] += notebook_4
    if "05_compare" in seconds:
        views = 1 + (TTA_VIEWS if p["TTA"] else 0)
        ensemble = p["CNN_SEEDS"] if p["CNN_SEEDS"] > 1 else 0  # networks of the seed ensemble
        # Networks run per image: each model on validation (its temperature) and on test with
        # its views; each seed on test (their spread); the ensemble on validation and test;
        # the resolution check, every model and the ensemble at two resolutions.
        cnn_passes = (validation + test * views + ensemble * test
                      + ensemble * (validation + test) + 2 * test * (1 + ensemble))
        resnet_passes = validation + test * views + 2 * test
        # Every prediction reads its split's files again: validation and test per model (its
        # views decoded once), each seed, the ensemble twice, and the two resolutions.
        file_passes = (2 * validation + 4 * test + ensemble * test
                       + (validation + test if ensemble else 0) + 2 * test)
        notebook_5 = (cnn_passes / cnn["infer"] + resnet_passes / resnet["infer"]
                      + file_passes / decode)
        notebook_5 += cnn["overhead"] / 2 + resnet["overhead"] / 2  # the predict graphs
        seconds["05_compare"] += notebook_5
    return seconds


def describe(seconds: dict[str, float], rates: dict, counts: dict[str, int],
             parameters: dict | None = None) -> str:
    """The estimate as printed: each notebook, the total where there are several, and the
    levers that shorten them (those ``parameters`` already pull left out)."""
    def minutes(value: float) -> str:
        return f"{value / 60:5.1f} min" if value >= 90 else f"{value:5.0f} s  "

    rates_said = "; ".join(f"{name} {rates[model]['train']:.0f}"
                           for model, name in (("cnn", "CNN"), ("resnet50", "ResNet50"))
                           if model in rates)
    lines = [f"Expected time here ({rates['precision']}; {counts['train']:,} training, "
             f"{counts['validation']:,} validation, {counts['test']:,} test images"
             + (f"; training images/s: {rates_said}" if rates_said else "")
             + (f"; a kernel's imports {rates['startup']:.1f} s" if "startup" in rates else "")
             + "):"]
    lines += [f"  {name:<18} {minutes(value)}" for name, value in seconds.items()]
    bound = ("full studies measured took up to 17% longer; early stopping may end runs "
             "sooner; a download is not counted")
    if len(seconds) > 1:
        lines.append(f"  {'in all':<18} {minutes(sum(seconds.values()))}  ({bound})")
    else:
        lines.append(f"  ({bound})")
    value = (parameters or {}).get("CLUSTER", "")
    shares = cluster_shares(value, rates.get("gpus", 0)) if value else None
    if value and shares is None:
        lines.append(f"CLUSTER={value}: counted as if trained here, one after another; the "
                     "scheduler's workers are not timed from here.")
    elif value:
        lines.append(f"CLUSTER={value}: trainings sent together counted {shares[0]} at once, "
                     f"each {shares[1]:.1f}x as long as alone here ("
                     + ("a GPU each)." if rates.get("gpus") else
                        "a share of the cores each; on 2 cores local:2 measured up to 35% "
                        "longer than that, docs/cluster.md)."))
    elif rates.get("gpus", 0) > 1 and {"03_train_cnn", "04_train_resnet50"} & set(seconds):
        lines.append(f"{rates['gpus']} GPUs here: CLUSTER=local:{rates['gpus']} trains the "
                     "independent runs at once, one GPU each, instead of each over all of "
                     "them (docs/cluster.md).")
    levers = [lever for name in seconds for lever in LEVERS.get(name, ())
              if not _in_effect(lever, parameters or {})]
    if levers:
        lines.append(f"Shorter (--set NAME=VALUE, or the parameters cell): {', '.join(levers)}"
                     ", or a GPU.")
    return "\n".join(lines)


def _in_effect(lever: str, parameters: dict) -> bool:
    """Whether ``parameters`` already set lever NAME=VALUE (VALUE as JSON)."""
    name, separator, value = lever.partition("=")
    return bool(separator) and name in parameters and parameters[name] == json.loads(value)


def split_counts(split_csv: Path) -> dict[str, int]:
    """Images per subset of the split notebook 1 wrote to ``split_csv``, and in all."""
    counts = split.read_split(split_csv)["split"].value_counts()
    return {"all": int(counts.sum()),
            **{name: int(counts.get(name, 0)) for name in split.SPLIT_NAMES}}


def _as_json(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):  # a path, an object, a cycle
        return False
    return True


def in_subprocess(parameters: dict, counts: dict[str, int] | None = None,
                  notebooks: tuple[str, ...] = project.NOTEBOOKS, timeout: float = 600
                  ) -> tuple[str, dict[str, float] | None]:
    """The estimate of ``notebooks`` for the declared ``parameters`` (and the split's
    ``counts`` where one exists, else ``image_counts``), measured by ``python -m
    helpers.tools.measure`` in a process of its own: (what to print, the seconds of each
    notebook), or (one line saying why there is none, None). Values JSON cannot hold are
    left out (no parameter is one)."""
    given = {"parameters": {name: value for name, value in parameters.items()
                            if _as_json(value)}, "counts": counts}
    command = [sys.executable, "-m", "helpers.tools.measure", "--notebooks", ",".join(notebooks)]
    try:
        done = subprocess.run(command, input=json.dumps(given), capture_output=True, text=True,
                              timeout=timeout, cwd=project.ROOT)
    except subprocess.TimeoutExpired:
        return f"No time estimate: measuring took over {timeout:.0f} s.", None
    except OSError as error:
        return f"No time estimate: {error}", None
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"No time estimate: {last}", None
    try:
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        return measured["text"], {name: float(seconds)
                                  for name, seconds in measured["seconds"].items()}
    except (IndexError, ValueError, KeyError, TypeError, AttributeError):
        return "No time estimate: the estimate's answer was not understood.", None


def print_for_notebook(name: str, split_csv: Path, namespace: dict) -> None:
    """Print notebook NAME's estimate on the runtime at hand, as the runner prints it: from
    its parameters (the UPPER_CASE names of ``namespace``, the notebook's globals) and the
    split's counts, measured in a process of its own (the kernel's models and memory are
    left alone); or one line saying why there is none."""
    if not Path(split_csv).exists():
        print(f"No time estimate: no split at {split_csv} yet (notebook 01 makes it).")
        return
    print("Timing a few training steps here for this notebook's expected time "
          "(about a minute)...", flush=True)
    parameters = {key: value for key, value in namespace.items() if key.isupper()}
    print(in_subprocess(parameters, split_counts(split_csv), (name,))[0])
