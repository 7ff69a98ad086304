"""Devices, precision and seeds: the distribution strategy for this machine, the Keras dtype
policy that speeds training up here without costing accuracy, and seeding."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import tensorflow as tf

from helpers import cluster, keras_fixes


def choose_strategy_kind(n_gpus: int) -> str:
    """"mirrored" with several GPUs, else "default". TPUs are not supported (``helpers.colab``)."""
    return "mirrored" if n_gpus > 1 else "default"


def select_strategy() -> tf.distribute.Strategy:
    """The distribution strategy for this machine (see ``choose_strategy_kind``)."""
    if choose_strategy_kind(len(tf.config.list_logical_devices("GPU"))) == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
# CPU flags (Linux /proc/cpuinfo) of units that run bfloat16 matrix products fast: Intel AMX
# (Sapphire Rapids and later) and AVX512-BF16 (Cooper Lake and later, AMD Zen 4 and later).
BFLOAT16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_supports_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has AMX-BF16 or AVX512-BF16, from ``/proc/cpuinfo`` (False without)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool(BFLOAT16_CPU_FLAGS & set(line.partition(":")[2].split()))
    return False


def choose_precision(gpu_compute_capabilities: list[tuple[int, int]],
                     cpu_bfloat16: bool = False, requested: str = "auto") -> str:
    """The Keras dtype policy: ``requested``, or for "auto" what speeds training up here.

    float16 on GPUs of compute capability 7.0+ (the slowest decides), bfloat16 on CPUs with
    bfloat16 units (docs/performance.md), else float32.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"PRECISION must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return requested
    if gpu_compute_capabilities:
        return "mixed_float16" if min(gpu_compute_capabilities) >= (7, 0) else "float32"
    return "mixed_bfloat16" if cpu_bfloat16 else "float32"


def precision_here(requested: str = "auto") -> str:
    """The dtype policy ``choose_precision`` picks for this machine's GPUs and CPU."""
    capabilities = [
        tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        for gpu in tf.config.list_physical_devices("GPU")
    ]
    return choose_precision(capabilities, cpu_supports_bfloat16(), requested)


def configure_precision(requested: str = "auto") -> str:
    """Set and return the global dtype policy chosen by ``choose_precision``."""
    policy = precision_here(requested)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def device_names() -> list[str]:
    """Human-readable names of the devices TensorFlow sees."""
    names = []
    for device in tf.config.list_physical_devices():
        details = tf.config.experimental.get_device_details(device)
        names.append(f"{device.device_type}: {details.get('device_name', device.name)}")
    return names


def cpu_threads() -> int:
    """The threads TensorFlow's CPU ops use in this process: a sum split over other threads
    adds in another order, so a run records it (a worker of ``CLUSTER = "local:2"`` on 2
    cores has 1, a kernel 2: same recipe, figures that differ by rounding)."""
    configured = tf.config.threading.get_intra_op_parallelism_threads()
    variable = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    return configured or (int(variable) if variable.isdigit() and int(variable) > 0
                          else cluster.cores())


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic``, make TF ops deterministic
    (slower on GPUs, and some ops raise)."""
    keras.utils.set_random_seed(seed)
    keras_fixes.own_default_seeds(seed)  # no other thread's draws change the initial weights
    if deterministic:
        tf.config.experimental.enable_op_determinism()
