"""Simulated GPUs: N logical CPU devices under MirroredStrategy, as on a machine with N GPUs,
for tests of the paths this CPU machine lacks (shared/design: "Running the GPU paths on a CPU").

    import simulated_gpus; simulated_gpus.install(2)       # in a script, before TensorFlow runs

It must run before TensorFlow initialises its devices, so in a fresh process: a script, or an
IPython startup file of a kernel that papermill starts (``startup_file``). The project then
picks MirroredStrategy over the CPU devices, as ``devices.select_strategy`` does for GPUs.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def install(replicas: int = 2) -> None:
    """Split the CPU into ``replicas`` devices and make ``devices.select_strategy`` mirror
    over them."""
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * replicas)
    if str(REPOSITORY) not in sys.path:
        sys.path.insert(0, str(REPOSITORY))

    from helpers import devices

    names = [f"/cpu:{index}" for index in range(replicas)]
    devices.select_strategy = lambda: tf.distribute.MirroredStrategy(names)


def startup_file(replicas: int = 2) -> str:
    """The text of an IPython startup file that installs ``replicas`` simulated GPUs in a
    kernel; its names are deleted, so a notebook's own globals cannot rebind them."""
    return (f"def _simulated_gpus():\n"
            f"    import sys\n"
            f"    sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            f"    import simulated_gpus\n"
            f"    simulated_gpus.install({replicas})\n"
            f"_simulated_gpus()\n"
            f"del _simulated_gpus\n")
