"""What values the study's parameters accept, judged before the first notebook runs.

Checked without TensorFlow, so a value a later notebook would fail on is refused before hours
of training; the notebooks declare each type, this says which values make sense.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from helpers.cluster import address_problem
from helpers.split import fractions_problem

# Choices of the parameters that name one; kept equal to the notebooks by tests.
DATA_SOURCES = ("kaggle", "medmnist", "local", "synthetic")
MEDMNIST_SIZES = (64, 128, 224)
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
LR_STRATEGIES = ("constant", "schedule", "plateau")
RESNET_MISTAKE_NAMES = ("earlier_training", "no_preprocessing", "double_scaling",
                        "batchnorm_training", "learning_rate", "frozen_small_input",
                        "no_preprocessing+batchnorm_training",
                        "batchnorm_training+learning_rate", "all")
RESNET50_BLOCKS = 16
RESNET50_SMALLEST_INPUT = 32  # keras.applications.ResNet50 without its top
def _at_least(lowest: int | float) -> Callable[[object], str | None]:
    def check(value):
        return None if value >= lowest else f"must be {lowest} or more, got {value!r}"
    return check


def _between(low: float, high: float, low_open: bool = True) -> Callable[[object], str | None]:
    def check(value):
        inside = (low < value if low_open else low <= value) and value <= high
        return None if inside and math.isfinite(value) else (
            f"must be in {'(' if low_open else '['}{low}, {high}], got {value!r}")
    return check


def _one_of(choices: tuple) -> Callable[[object], str | None]:
    def check(value):
        return None if value in choices else (
            f"must be one of {', '.join(map(str, choices))}; got {value!r}")
    return check


def _members_of(choices: tuple, every: str | None = None,
                empty: bool = True) -> Callable[[object], str | None]:
    def check(value):
        if every is not None and value == [every]:
            return None
        unknown = [item for item in value if item not in choices]
        if unknown:
            extra = f'["{every}"] or ' if every else ""
            return f"has no {unknown}: give {extra}a list of {', '.join(choices)}"
        if not empty and not value:
            return f"must list at least one of {', '.join(choices)}"
        return None
    return check


def _positive(value) -> str | None:
    return None if value > 0 and math.isfinite(value) else f"must be above 0, got {value!r}"


# Rules by name; a name not here accepts any value of its declared type. Name patterns
# (suffixes) cover the families: every *_EPOCHS, *_BATCH_SIZE...
RULES: dict[str, Callable[[object], str | None]] = {
    "DATA_SOURCE": _one_of(DATA_SOURCES),
    "MEDMNIST_SIZE": _one_of(MEDMNIST_SIZES),
    "PRECISION": _one_of(PRECISIONS),
    "CLUSTER": address_problem,
    "SPLIT_FRACTIONS": fractions_problem,
    "SPLIT_SEED": _at_least(0),
    "SEED": _at_least(0),
    "SYNTHETIC_IMAGES_PER_CLASS": _at_least(3),  # one image per split at least
    "SAMPLES_PER_CLASS": _at_least(1),
    "COLOUR_SAMPLE_PER_CLASS": _at_least(1),
    "CNN_IMAGE_SIZE": _at_least(16),
    "CNN_SEEDS": _at_least(1),
    "CNN_LR_STRATEGIES": _members_of(LR_STRATEGIES, empty=False),
    "RESNET_IMAGE_SIZE": _at_least(RESNET50_SMALLEST_INPUT),
    "RESNET_MISTAKES_IMAGE_SIZE": _at_least(RESNET50_SMALLEST_INPUT),
    "RESNET_FROZEN_EPOCHS": _at_least(1),  # phase 2 starts from phase 1's best
    "RESNET_FINE_TUNE_EPOCHS": _at_least(0),
    "RESNET_FINE_TUNE_BLOCKS": lambda value: None if 0 <= value <= RESNET50_BLOCKS else (
        f"must be 0-{RESNET50_BLOCKS} (residual blocks from the top), got {value!r}"),
    "RESNET_MISTAKES": _members_of(RESNET_MISTAKE_NAMES, every="every"),
    "BOOTSTRAP_RESAMPLES": _at_least(100),
    "CONVERGENCE_ACCURACY": _between(0, 1),
    "CONVERGED_ACCURACY_GAIN": _between(0, 1, low_open=False),
    "CONFUSED_PAIRS_SHOWN": _at_least(0),
    "MISTAKES_SHOWN": _at_least(0),
}
SUFFIX_RULES: dict[str, Callable[[object], str | None]] = {
    "_EPOCHS": _at_least(1),
    "_BATCH_SIZE": _at_least(1),
    "_PATIENCE": _at_least(1),
    "_MAX_IMAGES": _at_least(0),
    "_BATCHNORM_IMAGES": _at_least(0),
    "_LEARNING_RATE": _positive,
    "_WEIGHT_DECAY": _at_least(0),
    "_CROP_FRACTION": _between(0, 1),
}


def problems(values: dict) -> list[str]:
    """One line per parameter of ``values`` the study would refuse, naming what it accepts
    (types are checked before, by the runner's check_parameters)."""
    found = []
    for name, value in values.items():
        rule = RULES.get(name) or next(
            (check for suffix, check in SUFFIX_RULES.items() if name.endswith(suffix)), None)
        problem = rule(value) if rule is not None else None
        if problem:
            found.append(f"{name} {problem}")
    if values.get("DATA_SOURCE") == "local" and not values.get("DATA_DIR"):
        found.append("DATA_DIR must name the folder of images when DATA_SOURCE is local "
                     "(python -m helpers.study --data-dir DIR sets both)")
    return found
