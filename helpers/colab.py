"""What the notebooks' setup cells do in Google Colab: check the runtime, install what it lacks.

Colab's own builds (``PREINSTALLED``) are never reinstalled, only reported when out of range:
other versions need a runtime restart or have hidden the GPU. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers import project

STUDY_REQUIREMENTS = project.ROOT / "requirements" / "study.txt"
# Colab's own builds: never reinstalled or upgraded by the setup cell.
PREINSTALLED = ("tensorflow", "keras", "numpy", "pandas", "scikit-learn", "ipython")

NO_TENSORFLOW = ("This Colab runtime has no TensorFlow (Colab's TPU runtimes ship without it, "
                 "and the study does not run on TPUs): choose Runtime > Change runtime type > "
                 "T4 GPU, then Runtime > Run all.")


class ColabRuntimeError(RuntimeError):
    """The runtime cannot run the study as it is (one sentence says what to choose instead)."""


def read_requirements(path: str | Path = STUDY_REQUIREMENTS) -> list[Requirement]:
    """The requirement lines of a requirements file (comments and blank lines skipped)."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def plan_install(requirements: list[Requirement],
                 version_of: Callable[[str], str | None] = installed_version,
                 ) -> tuple[list[str], list[str]]:
    """What to install (requirement strings) and what to report (one line each).

    A preinstalled package is never installed, only reported when missing or out of range.
    """
    to_install, reports = [], []
    for requirement in requirements:
        version = version_of(requirement.name)
        satisfied = version is not None and requirement.specifier.contains(version,
                                                                            prereleases=True)
        if satisfied:
            continue
        if canonicalize_name(requirement.name) in PREINSTALLED:
            found = f"version {version}" if version else "none"
            reports.append(f"{requirement.name}: the study was tested with {requirement}, this "
                           f"runtime has {found}; left as Colab ships it.")
        else:
            to_install.append(str(requirement))
    return to_install, reports


def install_command(to_install: list[str]) -> list[str]:
    """The pip command that installs ``to_install`` into this kernel's Python."""
    return [sys.executable, "-m", "pip", "install", "--quiet", *to_install]


def prepare_runtime(requirements_path: str | Path = STUDY_REQUIREMENTS,
                    run: Callable[..., object] = subprocess.run) -> list[str]:
    """Stop with a clear sentence on a runtime without TensorFlow, then install only what the
    study needs and Colab lacks. Returns what was installed."""
    if importlib.util.find_spec("tensorflow") is None:
        raise ColabRuntimeError(NO_TENSORFLOW)
    to_install, reports = plan_install(read_requirements(requirements_path))
    for report in reports:
        print(report)
    if to_install:
        print("Installing what this runtime lacks: " + " ".join(to_install))
        run(install_command(to_install), check=True)
    else:
        print("This runtime has every package the study needs; nothing installed.")
    return to_install
