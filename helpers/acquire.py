"""Get the PBC images: from Kaggle (default), BloodMNIST on Zenodo, or a local folder.

Every source ends in a folder of class folders. Downloads are checksummed where possible and
renamed into place when complete; without a network each source fails within seconds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from helpers import files
from helpers.errors import DataSourceError
from helpers.labels import CLASS_NAMES
from helpers.locate import find_data_root

SOURCES = ("kaggle", "medmnist", "local")

KAGGLE_DATASET = "unclesamulus/blood-cells-image-dataset"
KAGGLE_URL = "https://www.kaggle.com"

# BloodMNIST (MedMNIST+ v3, Zenodo record 10519652): the PBC images center-cropped and resized,
# with the URLs and MD5 sums the medmnist package publishes. Labels 0-7 follow CLASS_NAMES.
MEDMNIST_FILES = {
    64: ("https://zenodo.org/records/10519652/files/bloodmnist_64.npz?download=1",
         "2b94928a2ae4916078ca51e05b6b800b"),
    128: ("https://zenodo.org/records/10519652/files/bloodmnist_128.npz?download=1",
          "adace1e0ed228fccda1f39692059dd4c"),
    224: ("https://zenodo.org/records/10519652/files/bloodmnist_224.npz?download=1",
          "b718ff6835fcbdb22ba9eacccd7b2601"),
}

NETWORK_TIMEOUT_SECONDS = 10


def _other_sources(source: str) -> str:
    """The other sources, named as every place that takes one does."""
    hints = {
        "kaggle": "kaggle (a public dataset: no Kaggle account needed)",
        "medmnist": "medmnist (BloodMNIST from Zenodo, 64/128/224 px)",
        "local": "local, a folder you downloaded and unpacked yourself (DATA_DIR; "
                 "python -m helpers.study --data-dir PATH)",
    }
    return ("Other sources (DATA_SOURCE in notebook 01, --set DATA_SOURCE=NAME for python -m "
            "helpers.study, --source NAME for python -m helpers.data): "
            + "; ".join(hint for name, hint in hints.items() if name != source))


def check_reachable(url: str, source: str, timeout: float = NETWORK_TIMEOUT_SECONDS) -> None:
    """Raise DataSourceError within ``timeout`` seconds when ``url``'s server cannot be reached.

    Any HTTP answer, even an error status, proves the network works.
    """
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DataSourceError(
            f"Cannot reach {url} ({reason}): no network, or it is blocked here. "
            + _other_sources(source)) from None


def file_md5(path: Path) -> str:
    """MD5 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, destination: str | os.PathLike, md5: str | None = None,
                  source: str = "medmnist", timeout: float = NETWORK_TIMEOUT_SECONDS) -> Path:
    """Download ``url`` to ``destination`` unless a valid copy is already there.

    Written to a temporary file, checked against ``md5``, then renamed into place
    (``files.atomic_output``).
    """
    destination = Path(destination)
    if destination.exists():
        if md5 is None or file_md5(destination) == md5:
            return destination
        print(f"{destination} fails its checksum; downloading it again.")
    with files.atomic_output(destination, suffix=".part") as temporary:
        digest = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, \
                    open(temporary, "wb") as handle:
                for block in iter(lambda: response.read(1 << 20), b""):
                    handle.write(block)
                    digest.update(block)
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise DataSourceError(f"Download of {url} failed ({reason}). "
                                  + _other_sources(source)) from None
        if md5 is not None and digest.hexdigest() != md5:
            raise DataSourceError(
                f"Downloaded {url} but its MD5 is {digest.hexdigest()}, expected {md5}: the "
                "file is damaged or has changed upstream. " + _other_sources(source))
    return destination


def npz_to_folders(npz_path: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Write a BloodMNIST .npz as PNG files in class folders (``<class>/<split>_<n>.png``).

    Built under a temporary name and renamed when complete, so an existing ``output_dir`` is
    whole and is reused as it is.
    """
    from PIL import Image

    output_dir = Path(output_dir)
    if output_dir.is_dir():
        return output_dir
    temporary = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=output_dir.name + "."))
    try:
        with np.load(npz_path) as arrays:
            for subset in ("train", "val", "test"):
                images = arrays[f"{subset}_images"]
                labels = arrays[f"{subset}_labels"].reshape(-1)
                for number, (pixels, label) in enumerate(zip(images, labels, strict=True)):
                    folder = temporary / CLASS_NAMES[int(label)]
                    folder.mkdir(exist_ok=True)
                    Image.fromarray(pixels).save(folder / f"{subset}_{number:05d}.png")
        os.replace(temporary, output_dir)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return output_dir


def acquire(source: str = "kaggle", data_dir: str | os.PathLike | None = None,
            cache_dir: str | os.PathLike = "data", medmnist_size: int = 224) -> Path:
    """Return the folder holding the class folders, downloading first if needed."""
    if source not in SOURCES:
        raise DataSourceError(f"Unknown data source {source!r}; choose one of "
                              f"{', '.join((*SOURCES, 'synthetic'))} (synthetic: cells drawn "
                              "by helpers.synthetic, for trying the notebooks out).")
    if source == "local":
        if data_dir is None:
            raise DataSourceError("The local source needs a data folder (--data-dir PATH).")
        return find_data_root(data_dir)
    if source == "kaggle":
        return find_data_root(_download_kaggle())
    if medmnist_size not in MEDMNIST_FILES:
        raise DataSourceError(f"BloodMNIST comes at {sorted(MEDMNIST_FILES)} px, "
                              f"not {medmnist_size}.")
    url, md5 = MEDMNIST_FILES[medmnist_size]
    folder = destination("medmnist", cache_dir=cache_dir, medmnist_size=medmnist_size)
    npz = download_file(url, folder.with_suffix(".npz"), md5)
    return npz_to_folders(npz, folder)


def destination(source: str, data_dir: str | os.PathLike | None = None,
                cache_dir: str | os.PathLike = "data", medmnist_size: int = 224) -> Path | None:
    """The folder ``acquire`` will read the images from, known before any download (to refuse
    a run folder inside it before anything is made); None for a source not in SOURCES."""
    if source == "local":
        return Path(data_dir) if data_dir is not None else None
    if source == "medmnist":
        return Path(cache_dir) / f"bloodmnist_{medmnist_size}"
    if source == "kaggle":
        try:  # imported late: it is only needed for this source
            from kagglehub import config
        except ImportError:  # the download says so, in one line
            return None
        return Path(config.get_cache_folder(), "datasets", *KAGGLE_DATASET.split("/"))
    return None


def _download_kaggle() -> str:
    """Download the Kaggle dataset with kagglehub (no account needed) and return its path.

    kagglehub keeps the ~300 MB in its cache (``KAGGLEHUB_CACHE``) and reuses it.
    """
    check_reachable(KAGGLE_URL, "kaggle")
    import kagglehub  # imported late: it is only needed for this source

    try:
        return kagglehub.dataset_download(KAGGLE_DATASET)
    except Exception as error:  # kagglehub raises many types; the message is what matters
        raise DataSourceError(
            f"Kaggle download of {KAGGLE_DATASET} failed: {type(error).__name__}: {error}. "
            "The dataset is public and downloads without a Kaggle account; credentials are "
            "used when present (KAGGLE_USERNAME and KAGGLE_KEY, ~/.kaggle/kaggle.json, or "
            "Colab secrets), so if the error says unauthorized, check or remove them. "
            + _other_sources("kaggle")) from None
