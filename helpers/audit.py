"""Index every file of a dataset folder and report what would stop it from being used.

The summary lists every file the split will leave out and why: nothing is dropped unreported.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from helpers import files, progressbar
from helpers.labels import CLASS_NAMES, PUBLISHED_IMAGES, PUBLISHED_SIZE
from helpers.locate import class_folders

# The formats the study uses (images.decode_rgb decodes them); anything else is reported.
SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP")

# A size held by fewer than this share of the images is listed as unusual.
UNUSUAL_SIZE_SHARE = 0.01

# A carriage return in a name: the split's CSV (written with "\n" line ends) would break there.
CARRIAGE_RETURN = ("unreadable: its name holds a carriage return, which would break the "
                   "split's CSV: rename it")
NOT_UTF8 = ("unreadable: its name is not valid UTF-8 (it cannot be listed in a split or a "
            "report): rename it")

INDEX_COLUMNS = [
    "path", "folder", "label", "bytes", "mtime_ns", "sha256", "pixels_sha256",
    "is_image", "decodable", "format", "width", "height", "mode", "problem",
]


@dataclass
class AuditResult:
    """The per-file index (a DataFrame with INDEX_COLUMNS) and its JSON-ready summary."""

    data_root: Path
    index: pd.DataFrame
    summary: dict


def inspect_file(path: Path) -> dict:
    """Hash one file and decode it as training will (``images.decode_rgb``); never raises for
    bad or unreadable content. A FIFO, device or folder is reported without being opened.

    ``mtime_ns`` is the file's time before it was read, so that a change while or after it
    was hashed shows as another time to every later reader (``integrity.changes``)."""
    row = {
        "bytes": 0, "mtime_ns": -1, "sha256": "", "pixels_sha256": "", "is_image": False,
        "decodable": False, "format": "", "width": 0, "height": 0, "mode": "", "problem": "",
    }
    kind = files.file_kind(path)
    if kind == "link to nothing":
        row["problem"] = "unreadable: a link to a file that does not exist"
        return row
    if kind != "regular file":
        row["problem"] = f"unreadable: a {kind}, not a regular file (not opened)"
        return row
    try:
        row["mtime_ns"] = path.stat().st_mtime_ns
        data = path.read_bytes()
    except OSError as error:
        row["problem"] = f"unreadable: {error.strerror or type(error).__name__}"
        return row
    row.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    if not files.is_utf8_name(path.name):
        row["problem"] = NOT_UTF8
        return row
    if not data:
        row["problem"] = "not an image: empty file"
        return row
    try:  # the header: format, size and colour mode, and Pillow's limit on pixels
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        row["problem"] = f"not an image: content is no known image format ({len(data)} bytes)"
        return row
    except Image.DecompressionBombError as error:  # PIL refuses images this large
        row.update(is_image=True, problem=f"too large to decode safely: {error}")
        return row
    except (OSError, ValueError, SyntaxError) as error:  # an image header cut short or damaged
        row.update(is_image=True, problem=f"corrupt image: {error}")
        return row
    row.update(is_image=True, format=image.format or "", mode=image.mode)
    row["width"], row["height"] = image.size
    if row["format"] not in SUPPORTED_FORMATS:
        supported = ", ".join(SUPPORTED_FORMATS)
        row["problem"] = f"unsupported format {row['format']} (supported: {supported})"
        return row
    # TensorFlow only here: this module's importers must not wait for it to refuse a busy run.
    import tensorflow as tf

    from helpers import images

    try:  # the decoder training uses decides: a truncated JPEG opens and fails only here
        pixels = images.decode_rgb(data).numpy()
    except tf.errors.OpError as error:
        reason = error.message.split("}}")[-1].replace("[Op:DecodeImage]", "").strip()
        try:  # Pillow often says more precisely what is wrong ("image file is truncated")
            image.load()
        except (OSError, ValueError, SyntaxError) as pillow_error:
            reason = f"{pillow_error}; {reason}"
        row["problem"] = f"corrupt image: TensorFlow cannot decode it ({reason[:300]})"
        return row
    # What training sees: one image saved in two formats (a PNG of a JPEG) is one content.
    row.update(decodable=True, pixels_sha256=hashlib.sha256(
        str(pixels.shape).encode() + pixels.tobytes()).hexdigest())
    return row


def _list_files(data_root: Path) -> list[tuple[Path, str, str, str]]:
    """Every file under the root as (path, relative path as text, top folder, label or '')."""
    labels = class_folders(data_root)
    listed = []
    for path in files.list_files(data_root):
        relative = path.relative_to(data_root)
        top = relative.parts[0] if len(relative.parts) > 1 else ""
        listed.append((path, files.display_name(relative.as_posix()), files.display_name(top),
                       labels.get(top, "")))
    return listed


def inspect_files(paths: list[Path], workers: int | None = None,
                  progress: bool = False) -> list[dict]:
    """``inspect_file`` of each of ``paths``, in order, on ``workers`` threads (default: one
    per core): hashlib and TensorFlow release the GIL."""
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = pool.map(inspect_file, paths)
        if progress:
            results = progressbar.track(results, len(paths), "audit", "file")
        return list(results)


def audit(data_root: str | os.PathLike, workers: int | None = None,
          progress: bool = False) -> AuditResult:
    """Index every file under ``data_root`` (the folder holding the class folders), on
    ``workers`` threads (``inspect_files``)."""
    data_root = Path(data_root)
    listed = _list_files(data_root)
    results = inspect_files([path for path, _, _, _ in listed], workers, progress)
    rows = [
        {"path": relative, "folder": folder, "label": label, **result}
        for (_, relative, folder, label), result in zip(listed, results, strict=True)
    ]
    for row, (path, _, _, _) in zip(rows, listed, strict=True):
        if not row["problem"] and not files.is_utf8_name(path.relative_to(data_root)):
            row.update(problem=NOT_UTF8, decodable=False)  # a folder on its way is not UTF-8
        elif not row["problem"] and "\r" in row["path"]:
            row.update(problem=CARRIAGE_RETURN, decodable=False)
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    return AuditResult(data_root=data_root, index=index, summary=summarize(index, data_root))


def index_csv(index: pd.DataFrame) -> str:
    """The per-file index as CSV text, every text quoted: it lists the files left out too,
    whose names may hold a carriage return."""
    return index.to_csv(index=False, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)


def usable_mask(index: pd.DataFrame) -> pd.Series:
    """Rows that are decodable images of a supported format inside a class folder."""
    return (index["label"] != "") & (index["problem"] == "")


def summarize(index: pd.DataFrame, data_root: Path) -> dict:
    """Build the JSON-ready report of an index (each key: docs/data.md, "Data commands")."""
    usable = index[usable_mask(index)]
    in_class = index[index["label"] != ""]
    folders = class_folders(data_root)
    folder_names = {files.display_name(entry.name) for entry in data_root.iterdir()
                    if entry.is_dir()}
    unknown_folders = sorted(folder_names - set(folders))
    per_class = {label: int((usable["label"] == label).sum()) for label in CLASS_NAMES}

    sizes = Counter(f"{w}x{h}" for w, h in zip(usable["width"], usable["height"], strict=True))
    rare = {size for size, n in sizes.items() if n < UNUSUAL_SIZE_SHARE * len(usable)}
    usable_sizes = usable["width"].astype(str) + "x" + usable["height"].astype(str)

    groups = usable.groupby("pixels_sha256")["path"]
    duplicate_groups, cross_class_conflicts = [], []
    for _, paths in groups:
        if len(paths) < 2:
            continue
        group_labels = usable.loc[paths.index, "label"]
        if group_labels.nunique() > 1:
            cross_class_conflicts.append(sorted(paths))
        for _, same_class in paths.groupby(group_labels):
            if len(same_class) > 1:
                duplicate_groups.append(sorted(same_class))

    problem_rows = in_class[in_class["problem"] != ""]
    unreadable = problem_rows["problem"].str.startswith("unreadable")
    unsupported = problem_rows["problem"].str.startswith("unsupported format")
    return {
        "data_root": str(data_root),
        "n_files": int(len(index)),
        "n_images": int(len(usable)),
        "per_class": per_class,
        "class_folders": {label: sorted(f for f, lab in folders.items() if lab == label)
                          for label in CLASS_NAMES},
        "missing_classes": [label for label in CLASS_NAMES if label not in folders.values()],
        "empty_classes": [label for label in CLASS_NAMES
                          if label in folders.values() and per_class[label] == 0],
        "unknown_folders": {
            name: int((index["folder"] == name).sum()) for name in unknown_folders
        },
        "outside_class_folders": sorted(index.loc[index["label"] == "", "path"]),
        "unreadable": sorted(problem_rows.loc[unreadable, "path"]),
        "not_images": sorted(problem_rows.loc[~problem_rows["is_image"] & ~unreadable, "path"]),
        "corrupt": sorted(problem_rows.loc[problem_rows["is_image"] & ~unsupported, "path"]),
        "unsupported_format": sorted(problem_rows.loc[unsupported, "path"]),
        "problems": dict(zip(problem_rows["path"], problem_rows["problem"], strict=True)),
        "formats": dict(Counter(usable["format"]).most_common()),
        "modes": dict(Counter(usable["mode"]).most_common()),
        "non_rgb": dict(zip(usable.loc[usable["mode"] != "RGB", "path"],
                            usable.loc[usable["mode"] != "RGB", "mode"], strict=True)),
        "sizes": dict(sizes.most_common()),
        "unusual_sizes": dict(sorted(zip(usable.loc[usable_sizes.isin(rare), "path"],
                                         usable_sizes[usable_sizes.isin(rare)], strict=True))),
        "duplicate_groups": sorted(duplicate_groups),
        "cross_class_conflicts": sorted(cross_class_conflicts),
    }


def format_summary(summary: dict) -> str:
    """A readable multi-line report of an audit summary."""
    def listing(items, limit=10):
        items = list(items)
        lines = [f"    {files.terminal_text(str(item))}" for item in items[:limit]]
        if len(items) > limit:
            lines.append(f"    ... and {len(items) - limit} more (see the JSON report)")
        return lines

    lines = [
        f"Data root: {summary['data_root']}",
        f"Files: {summary['n_files']:,}   usable images: {summary['n_images']:,}",
        "",
        f"  {'class':<14}{'images':>8}",
    ]
    lines += [f"  {label:<14}{n:>8,}" for label, n in summary["per_class"].items()]
    sizes = ", ".join(f"{size} ({n:,})" for size, n in list(summary["sizes"].items())[:5])
    lines += ["", f"Sizes (most common): {sizes or 'none'}",
              f"Formats: {summary['formats']}   modes: {summary['modes']}", ""]
    checks = [
        ("Missing classes", summary["missing_classes"]),
        ("Empty classes", summary["empty_classes"]),
        ("Unknown folders (not used)",
         [f"{name}/ ({n} files)" for name, n in summary["unknown_folders"].items()]),
        ("Files outside class folders (not used)", summary["outside_class_folders"]),
        ("Unreadable files (not used)", [f"{p}: {summary['problems'][p]}"
                                         for p in summary.get("unreadable", [])]),
        ("Not images (not used)", [f"{p}: {summary['problems'][p]}"
                                   for p in summary["not_images"]]),
        ("Corrupt images (not used)", [f"{p}: {summary['problems'][p]}"
                                       for p in summary["corrupt"]]),
        ("Unsupported formats (not used)", summary["unsupported_format"]),
        ("Non-RGB images (used, converted to RGB)",
         [f"{p}: {mode}" for p, mode in summary["non_rgb"].items()]),
        ("Unusual sizes (used, resized)",
         [f"{p}: {size}" for p, size in summary["unusual_sizes"].items()]),
        ("Duplicate groups within a class (one file of each kept)",
         [" = ".join(group) for group in summary["duplicate_groups"]]),
        ("Same content under two classes (all copies left out)",
         [" = ".join(group) for group in summary["cross_class_conflicts"]]),
    ]
    for title, items in checks:
        lines.append(f"{title}: {len(items) if items else 'none'}")
        lines += listing(items)
    return "\n".join(lines)


def compared_with_published(summary: dict) -> str:
    """The usable images' count and most common size beside the published dataset's, and
    what a smaller copy means for the results."""
    size = next(iter(summary["sizes"]), "none")
    text = (f"This run was given {summary['n_images']:,} usable images, most of them {size} "
            f"px; the published dataset has {PUBLISHED_IMAGES:,} of {PUBLISHED_SIZE} px.")
    if size not in (PUBLISHED_SIZE, "none"):
        text += (" Images of another size are not those the published figures were measured "
                 "on: notebook 5's resolution check says how much the models' answers "
                 "depend on the size.")
    return text
