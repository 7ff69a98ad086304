"""Where the project lives: its public repository (for Colab) and its root folder here.

REPOSITORY_URL is the one place the public address is written. The notebooks' Colab badges
and install cells are generated from it (``python -m helpers.tools.notebooks sync``) and the lint
test checks them against it, so changing the address is one edit and one command.
"""

from __future__ import annotations

import os
from pathlib import Path

REPOSITORY_URL = "https://github.com/blood-cell-study/blood-cell-study"
BRANCH = "main"
# Where the Colab install cell clones the repository.
COLAB_CHECKOUT = "/content/blood-cell-study"

ROOT = Path(__file__).resolve().parents[1]
# The study's notebooks in the order they run (notebooks/NAME.ipynb).
NOTEBOOKS = ("01_data", "02_explore", "03_train_cnn", "04_train_resnet50", "05_compare")


def resolve(path: str | os.PathLike) -> Path:
    """``path`` itself when absolute, else relative to the repository root (not the cwd,
    which differs between papermill, nbval and Colab)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path
