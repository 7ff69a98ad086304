"""The eight PBC classes and the mapping from folder names to them."""

from __future__ import annotations

import re

# Alphabetical, which is also BloodMNIST's label order: label index i is CLASS_NAMES[i].
CLASS_NAMES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)

# The published dataset (Acevedo et al., 2020): what notebook 1 compares a download with.
PUBLISHED_IMAGES = 17_092
PUBLISHED_SIZE = "360x363"  # width x height in pixels, as the audit writes sizes

# Spellings seen in other copies of the dataset (the Mendeley original, BloodMNIST's label text).
_ALIASES = {
    "immature_granulocytes": "ig",
    "immature_granulocyte": "ig",
    "thrombocyte": "platelet",
}


def canonical_label(folder_name: str) -> str | None:
    """Return the canonical class for a folder name, or None when it names no class.

    Case, surrounding space, hyphens and a plural ``s`` are ignored: ``"IG"``,
    ``"Neutrophils"`` and ``"immature-granulocytes"`` all map to a class.
    """
    key = re.sub(r"[\s\-]+", "_", folder_name.strip().lower())
    for candidate in (key, key[:-1] if key.endswith("s") else key):
        if candidate in CLASS_NAMES:
            return candidate
        if candidate in _ALIASES:
            return _ALIASES[candidate]
    return None
