"""Helpers for the blood-cell classification study: data, models, evaluation and plots.

The notebooks import these modules by name (``from helpers import audit``); each module does
one thing and is tested in ``tests/``.
"""

import os

# TensorFlow's C++ INFO lines (CUDA probing, oneDNN notices) drown the notebooks' output.
# Level 1 hides INFO only: warnings and errors still show. A user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
