"""A small synthetic dataset laid out like the PBC download, for tests and the smoke profile.

Class traits overlap and every image gets its own tint, noise and position, so the classes
are learnable but not separable by one pixel statistic. The download's quirks can be planted.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import files
from helpers.errors import DataError
from helpers.labels import CLASS_NAMES

# Per class: cell radius (share of image), nucleus lobes, nucleus radius (share of cell),
# nucleus colour, cytoplasm colour, granule colour (None: no granules), granule density.
_TRAITS = {
    "basophil":     (0.26, 2, 0.55, (80, 40, 120), (200, 170, 210), (60, 20, 90), 0.50),
    "eosinophil":   (0.28, 2, 0.45, (110, 60, 140), (235, 170, 140), (220, 100, 70), 0.45),
    "erythroblast": (0.20, 1, 0.70, (60, 30, 90), (190, 160, 190), None, 0.0),
    "ig":           (0.31, 1, 0.55, (120, 80, 160), (215, 185, 215), (170, 120, 170), 0.15),
    "lymphocyte":   (0.21, 1, 0.80, (80, 50, 130), (170, 180, 225), None, 0.0),
    "monocyte":     (0.33, 1, 0.50, (130, 90, 170), (200, 190, 220), None, 0.0),
    "neutrophil":   (0.27, 4, 0.30, (100, 50, 140), (230, 200, 215), (200, 170, 200), 0.10),
    "platelet":     (0.07, 1, 0.90, (120, 70, 160), (200, 150, 200), None, 0.0),
}

# Bytes that start a macOS AppleDouble metadata file, the non-image `.jpg` in the download.
_APPLEDOUBLE_HEADER = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "


def _disk(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float) -> np.ndarray:
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2


def make_cell_image(label: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one synthetic cell of class ``label`` as a uint8 RGB array (size x size)."""
    radius_share, lobes, nucleus_share, nucleus, cytoplasm, granules, density = _TRAITS[label]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.empty((size, size, 3), np.float32)
    image[:] = np.array([235, 215, 205]) + rng.normal(0, 6, 3)
    for _ in range(rng.integers(3, 8)):  # red blood cells, some under the image edge
        cy, cx = rng.uniform(0, size, 2)
        rbc_radius = size * rng.uniform(0.09, 0.14)
        image[_disk(yy, xx, cy, cx, rbc_radius)] = np.array([225, 150, 150]) + rng.normal(0, 8, 3)
        image[_disk(yy, xx, cy, cx, rbc_radius * 0.45)] = [232, 180, 175]
    cy, cx = size / 2 + rng.normal(0, size * 0.04, 2)
    cell_radius = size * radius_share * rng.uniform(0.8, 1.2)
    cell = _disk(yy, xx, cy, cx, cell_radius)
    image[cell] = np.array(cytoplasm) + rng.normal(0, 12, 3)
    if granules is not None:
        speckle = cell & (rng.random((size, size)) < density * rng.uniform(0.6, 1.4))
        image[speckle] = np.array(granules) + rng.normal(0, 15, 3)
    n_lobes = max(1, lobes + int(rng.integers(-1, 2)))
    for lobe in range(n_lobes):
        angle = 2 * np.pi * lobe / n_lobes + rng.uniform(0, 2 * np.pi)
        offset = 0.0 if n_lobes == 1 else cell_radius * 0.4
        lobe_radius = cell_radius * nucleus_share * rng.uniform(0.8, 1.15) / np.sqrt(n_lobes)
        image[_disk(yy, xx, cy + offset * np.sin(angle), cx + offset * np.cos(angle),
                    lobe_radius)] = np.array(nucleus) + rng.normal(0, 12, 3)
    image *= rng.uniform(0.85, 1.1, 3)  # stain and illumination vary from slide to slide
    image += rng.normal(0, 7, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_synthetic_dataset(root: str | os.PathLike, images_per_class: int = 12,
                           image_size: int = 64, seed: int = 0,
                           quirks: bool = True) -> dict[str, str]:
    """Write a dataset under ``root/<class>/`` and return what was planted.

    With ``quirks`` the download's quirks are planted, each named in the returned dict (key ->
    path relative to ``root``; see ``_PLANTED``).
    """
    root = Path(root)
    if seed < 0:
        raise DataError(f"The synthetic dataset's seed must be 0 or more, got {seed}.")
    if images_per_class < 1 or image_size < 16:
        raise DataError(f"A synthetic dataset needs at least 1 image per class and 16 px "
                        f"(asked: {images_per_class} per class, {image_size} px).")
    check_folder(root)
    rng = np.random.default_rng(seed)
    for label in CLASS_NAMES:
        (root / label).mkdir(parents=True, exist_ok=True)
        for number in range(images_per_class):
            pixels = make_cell_image(label, image_size, rng)
            Image.fromarray(pixels).save(root / label / f"{label}_{number:04d}.jpg", quality=92)
    for path in files.list_files(root):  # drawn before with more images or quirks: not now
        relative = path.relative_to(root).as_posix()
        number = _DRAWN.fullmatch(relative)
        if (int(number["number"]) >= images_per_class if number
                else relative in _PLANTED.values() and not quirks):
            path.unlink()
    if not quirks:
        unknown = root / _PLANTED["unknown_folder"]
        if unknown.is_dir() and not any(unknown.iterdir()):
            unknown.rmdir()
        return {}
    _plant_quirks(root, image_size, rng)
    return dict(_PLANTED)


def check_folder(root: str | os.PathLike) -> None:
    """Refuse a folder holding files this module does not draw: drawing would mix them."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is a {files.file_kind(root)}, not a folder: give a folder "
                        "for the synthetic dataset.")
    foreign = [path for path in (files.list_files(root) if root.exists() else [])
               if not (_DRAWN.fullmatch(path.relative_to(root).as_posix())
                       or path.relative_to(root).as_posix() in _PLANTED.values())]
    if foreign:
        raise DataError(f"{root} holds files that are not a synthetic dataset's (e.g. "
                        f"{files.display_name(foreign[0])}, {len(foreign)} in all): drawing "
                        "there would mix made-up cells into them. Give an empty or new folder.")


# The files make_synthetic_dataset writes: drawn cells, and the quirks it plants.
_DRAWN = re.compile(r"(?P<label>" + "|".join(CLASS_NAMES)
                    + r")/(?P=label)_(?P<number>\d{4,})\.jpg")
_PLANTED = {
    "not_image": "neutrophil/.DS_000001.jpg",
    "duplicate_of": "basophil/basophil_0000.jpg",
    "duplicate": "basophil/basophil_copy.jpg",
    "cross_class_of": "eosinophil/eosinophil_0000.jpg",
    "cross_class": "neutrophil/neutrophil_from_eosinophil.jpg",
    "grayscale": "lymphocyte/lymphocyte_gray.jpg",
    "rgba": "monocyte/monocyte_rgba.png",
    "corrupt": "platelet/platelet_truncated.jpg",
    "unknown_folder": "unknown_folder",
}


def _plant_quirks(root: Path, image_size: int, rng: np.random.Generator) -> None:
    planted = _PLANTED
    (root / planted["not_image"]).write_bytes(_APPLEDOUBLE_HEADER + bytes(4070))
    shutil.copyfile(root / planted["duplicate_of"], root / planted["duplicate"])
    shutil.copyfile(root / planted["cross_class_of"], root / planted["cross_class"])
    gray = make_cell_image("lymphocyte", image_size, rng)
    Image.fromarray(gray).convert("L").save(root / planted["grayscale"], quality=92)
    rgba = Image.fromarray(make_cell_image("monocyte", image_size, rng)).convert("RGBA")
    rgba.save(root / planted["rgba"])
    buffer = io.BytesIO()
    Image.fromarray(make_cell_image("platelet", image_size, rng)).save(buffer, "JPEG")
    # Cut inside the scan: the header opens, and it fails only when decoded in full.
    encoded = buffer.getvalue()
    scan_start = encoded.index(b"\xff\xda")
    cut = scan_start + (len(encoded) - scan_start) // 2
    (root / planted["corrupt"]).write_bytes(encoded[:cut])
    (root / planted["unknown_folder"]).mkdir(exist_ok=True)
