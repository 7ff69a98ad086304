"""Small file helpers shared by the command lines and the notebooks.

Every file is written through a uniquely named temporary file and a rename, and only onto a
regular file or a new name (see docs/guarantees.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from helpers.errors import DataError

# The permissions a new file gets (what open() would give it): mkstemp makes 0600 files.
_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputError(DataError):
    """An output cannot be written where it was asked for; the message says why."""


def file_kind(path: str | os.PathLike) -> str:
    """What is at ``path``, in words: "regular file", "folder", "device", "FIFO", "socket",
    "link to nothing" or "nothing"."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there, or a file on the way
        return "link to nothing" if os.path.islink(path) else "nothing"
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def output_target(path: str | os.PathLike) -> Path:
    """The file an output written at ``path`` lands in (a link to a regular file is written
    through); OutputError for anything but a regular file or nothing."""
    path = Path(path)
    kind = file_kind(path)
    link = path.is_symlink()
    if kind == "regular file":
        return path.resolve() if link else path
    if kind == "nothing":
        return path
    what = f"a link to a {kind}" if link and kind != "link to nothing" else f"a {kind}"
    raise OutputError(f"{path} is {what}, not a regular file: an output is written only to "
                      "a regular file or a new name. Give another file name.")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A unique temporary path beside ``path``, moved onto it when the ``with`` block
    succeeds and removed when it fails (Keras saves only to names ending in .keras)."""
    target = output_target(path)
    temporary = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                            suffix=suffix)
        os.close(descriptor)
        temporary = Path(name)
        yield temporary
        mode = (stat.S_IMODE(target.stat().st_mode) if target.exists()
                else 0o666 & ~_UMASK)
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except OSError as error:
        about = (f" ({error.filename})" if error.filename
                 and Path(error.filename) not in (temporary, target) else "")
        raise OutputError(f"Could not write {path}: {error.strerror or error}{about}.") from error
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)


def write_text_atomically(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating its folder (module doc)."""
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def copy_atomically(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Copy a file to ``destination`` atomically, creating its folder (module doc)."""
    with atomic_output(destination) as temporary:
        shutil.copyfile(source, temporary)


def list_files(folder: str | os.PathLike, skip_hidden: bool = False) -> list[Path]:
    """Every file under ``folder``, sorted, following linked folders but listing each real
    folder once, so a link back up cannot loop: a folder under ``folder`` at its own place,
    never through a link (in a class folder, a link to another would relabel its images).
    Links to nothing and special files are listed too, for the reader to report."""
    found, visited = [], set()
    start = os.fspath(folder)
    top = os.path.realpath(start)
    for current, subfolders, names in os.walk(start, followlinks=True):
        real = os.path.realpath(current)
        parent, name = os.path.split(current)
        reached_by_link = real != os.path.join(os.path.realpath(parent), name)
        if real in visited or (current != start and reached_by_link
                               and (real == top or real.startswith(top + os.sep))):
            subfolders[:] = []
            continue
        visited.add(real)
        subfolders.sort()  # which of two links to one folder is listed must not vary
        if skip_hidden:
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
            names = [name for name in names if not name.startswith(".")]
        found += [Path(current) / name for name in names]
    return sorted(found)


def display_name(path: str | os.PathLike) -> str:
    """``path`` as text that can be printed and written as UTF-8: bytes of a name that are
    not UTF-8 (kept by Python as surrogates) shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def terminal_text(text: str) -> str:
    """``text`` safe to show on a terminal or in a report: control characters written as
    \\xNN or \\uNNNN."""
    return "".join(
        character if unicodedata.category(character) not in ("Cc", "Cf", "Zl", "Zp")
        else (f"\\x{ord(character):02x}" if ord(character) < 0x100
              else f"\\u{ord(character):04x}")
        for character in text)


def is_utf8_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` is valid UTF-8 (a file copied from an old system may not be)."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def write_json(data: dict, path: str | os.PathLike) -> None:
    """Write ``data`` as indented UTF-8 JSON, atomically (``write_text_atomically``)."""
    write_text_atomically(json.dumps(data, indent=2) + "\n", path)


_NO_DEFAULT = object()


def read_json(path: str | os.PathLike, default: object = _NO_DEFAULT):
    """The JSON in ``path`` (read as UTF-8), or ``default`` where given and the file does not
    exist."""
    path = Path(path)
    if default is not _NO_DEFAULT and not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
