"""What identifies a run: its recipe's fingerprint (kept or trained again?) and the code's
git commit."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import keras

from helpers import schedules


def git_commit(folder: str | os.PathLike = Path(__file__).parent) -> str:
    """The commit of the checkout holding ``folder``, plus " with uncommitted changes" when
    its files differ; "unknown" outside a git checkout."""
    def git(*arguments: str) -> str:
        return subprocess.run(["git", *arguments], capture_output=True, text=True, check=True,
                              cwd=folder).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + (" with uncommitted changes" if git("status", "--porcelain") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# Keras numbers what it names itself within a process (input_layer_1, adam_w_1...), in the
# names and in every reference to them (a model's input_layers, a tensor's keras_history): a
# model's numbers depend on what the process built before it, so a run trained on a cluster's
# worker would not match one of the kernel. Dropped wherever they appear.
_NUMBERED = re.compile(r'"([^"]*?)_\d+"')
# Before references were covered: only the "name" fields (fingerprints recorded until 2026-12).
_NUMBERED_NAME = re.compile(r'("name": "[^"]*?)_\d+"')


def recipe_fingerprint(model: keras.Model, *settings) -> str:
    """A hash of the model's and optimizer's configurations and ``settings``, the same in
    every process whatever it built before (Keras's own numbering of names is dropped)."""
    return hashlib.sha256(_NUMBERED.sub(r'"\1"', _recipe_text(model, settings))
                          .encode()).hexdigest()


def earlier_fingerprint(model: keras.Model, *settings) -> str:
    """``recipe_fingerprint`` as runs recorded it before 2026-12 (numbers dropped from names
    only), so that their finished runs are still kept."""
    return hashlib.sha256(_NUMBERED_NAME.sub(r'\1"', _recipe_text(model, settings))
                          .encode()).hexdigest()


def _recipe_text(model: keras.Model, settings: tuple) -> str:
    # A model never compiled (an ensemble) has no optimizer attribute.
    optimizer = getattr(model, "optimizer", None)
    optimizer = _as_keras_schedule(optimizer.get_config()) if optimizer is not None else {}
    loss = getattr(model, "loss", None)
    return json.dumps([model.get_config(), optimizer, loss, *settings], sort_keys=True,
                      default=str)


def _as_keras_schedule(config):
    """``config`` with each WarmupCosineDecay written as the Keras CosineDecay it equals, so
    runs trained with Keras's class are kept, not trained again."""
    if isinstance(config, dict):
        if (config.get("registered_name")
                == keras.saving.get_registered_name(schedules.WarmupCosineDecay)
                and isinstance(config.get("config"), dict)):
            return keras.saving.serialize_keras_object(
                keras.optimizers.schedules.CosineDecay(**config["config"]))
        return {key: _as_keras_schedule(value) for key, value in config.items()}
    if isinstance(config, list | tuple):
        return [_as_keras_schedule(value) for value in config]
    return config
