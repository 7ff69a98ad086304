"""One writer per run folder: a lock file naming the process and host that hold it.

A second writer is refused at once, naming the holder; a stale lock (a dead process here, or
another host silent for STALE_AFTER_SECONDS) is taken over. See docs/guarantees.md.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from helpers import files
from helpers.errors import DataError

LOCK_NAME = ".lock"
# The lock a parent process (the headless study) holds, inherited by the kernels it starts.
LOCK_VARIABLE = "BLOOD_CELL_STUDY_LOCK"

HEARTBEAT_SECONDS = 60
STALE_AFTER_SECONDS = 600
# A lock missing or unreadable at a heartbeat is read again for this long before it counts as
# lost: a process judging it stale moves it aside and back, and without hard links a lock is
# written after it is created.
RECHECK_SECONDS = 10

# Locks this process holds: run folder -> (token, how many times acquired).
_held: dict[Path, list] = {}
_heartbeat: threading.Thread | None = None


def _refresh_held_locks() -> None:
    """Touch the lock files this process holds, every HEARTBEAT_SECONDS; a lock taken over
    meanwhile is said once and no longer touched."""
    while True:
        time.sleep(HEARTBEAT_SECONDS)
        for root, entry in list(_held.items()):
            if entry[0] is None:
                continue
            path = lock_path(root)
            holder = _read_holder(path)
            deadline = time.monotonic() + RECHECK_SECONDS
            while holder is None and time.monotonic() < deadline:
                time.sleep(min(1.0, RECHECK_SECONDS / 10))
                holder = _read_holder(path)
            if holder is None or holder.get("token") != entry[0]:
                entry[0] = None
                print(f"warning: the lock of {root} is no longer this process's (now: "
                      f"{describe(holder) if holder else 'none'}); another writer may use the "
                      "folder.", file=sys.stderr)
                continue
            with contextlib.suppress(OSError):
                os.utime(path)


def _start_heartbeat() -> None:
    global _heartbeat
    if _heartbeat is None:
        _heartbeat = threading.Thread(target=_refresh_held_locks, name="run folder lock",
                                      daemon=True)
        _heartbeat.start()


def _seconds_since_refresh(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _seconds_seen_unchanged(path: Path, holder: dict) -> float:
    """How long this machine, by its own clock, has seen the lock ``path`` unchanged: for a
    holder whose clock runs ahead, whose refresh times lie in our future. The first look is
    recorded in ``.lock.seen-HOST``."""
    try:
        refreshed = path.stat().st_mtime_ns
    except OSError:
        return 0.0
    seen_file = path.with_name(f"{LOCK_NAME}.seen-{socket.gethostname()}")
    seen = {"token": holder.get("token"), "refreshed_ns": refreshed}
    try:
        earlier = files.read_json(seen_file)
        if {key: earlier.get(key) for key in seen} == seen:
            return time.time() - float(earlier["first_seen"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    with contextlib.suppress(OSError):
        seen_file.write_text(json.dumps({**seen, "first_seen": time.time()}), encoding="utf-8")
    return 0.0


class RunFolderBusyError(DataError):
    """Another process holds the run folder's lock."""


def lock_path(root: str | os.PathLike) -> Path:
    """The lock file of a run folder."""
    return Path(root) / LOCK_NAME


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read_holder(path: Path) -> dict | None:
    try:
        holder = files.read_json(path)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _create(path: Path, holder: dict) -> bool:
    """Create the lock file with its content in one step; False when it exists already."""
    text = json.dumps(holder, indent=2) + "\n"
    temporary = path.with_name(f"{LOCK_NAME}.{holder['token']}.tmp")
    temporary.write_text(text, encoding="utf-8")
    try:
        os.link(temporary, path)  # fails when the lock exists: no moment with half a file
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links (a mounted Drive)
        return _create_exclusively(path, text)
    finally:
        temporary.unlink(missing_ok=True)


def _create_exclusively(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text``, without hard links; False when it exists already. A
    reader may see it empty for a moment (the heartbeat reads it again)."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w", encoding="utf-8") as lock_file:
        lock_file.write(text)
    return True


def _remove_if_still(path: Path, holder: dict, token: str) -> bool:
    """Remove the lock file if it is still ``holder``'s; whether it was removed.

    Moved aside first, so two processes that judged it stale cannot remove each other's."""
    aside = path.with_name(f"{LOCK_NAME}.stale-{token}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return False
    if (_read_holder(aside) or {}).get("token") == holder.get("token"):
        aside.unlink(missing_ok=True)
        return True
    # Another process's new lock: put it back, unless a third has made one since (then its
    # holder's heartbeat says the lock is no longer its own).
    try:
        os.link(aside, path)
    except FileExistsError:
        pass
    except OSError:  # no hard links (a mounted Drive): recreate it with the same content
        with contextlib.suppress(OSError):
            _create_exclusively(path, aside.read_text(encoding="utf-8"))
    aside.unlink(missing_ok=True)
    return False


def describe(holder: dict) -> str:
    """``process PID on HOST (PURPOSE, since TIME)``."""
    return (f"process {holder.get('pid')} on {holder.get('host')} ({holder.get('purpose')}, "
            f"since {holder.get('started')})")


def acquire(root: str | os.PathLike, purpose: str) -> None:
    """Take (or count again) the lock of ``root``, or raise RunFolderBusyError naming the
    holder. A parent's lock given in LOCK_VARIABLE counts as this process's own."""
    root = Path(root).resolve()
    if root in _held:
        _held[root][1] += 1
        return
    path = lock_path(root)
    inherited = os.environ.get(LOCK_VARIABLE)
    holder = _read_holder(path)
    if inherited and holder and holder.get("token") == inherited:
        _held[root] = [None, 1]  # the parent's: it releases it
        return
    try:  # a folder that cannot be written: one line, before anything else
        root.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(dir=root, prefix=f"{LOCK_NAME}.probe-")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise DataError(f"Cannot write in the run folder {root} ({error.strerror or error}): "
                        "give a folder you can write to.") from None
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex}
    for _ in range(3):  # a stale lock taken over, or one released while we looked
        if _create(path, mine):
            _held[root] = [mine["token"], 1]
            _start_heartbeat()
            path.with_name(f"{LOCK_NAME}.seen-{socket.gethostname()}").unlink(missing_ok=True)
            return
        holder = _read_holder(path)
        if holder is None:
            if not path.exists():
                continue
            raise RunFolderBusyError(
                f"{root} is locked by {path}, which is not readable: if no study or training "
                f"notebook is running on this folder, delete {path} and run again.")
        same_host = holder.get("host") == socket.gethostname()
        silent = _seconds_since_refresh(path)
        ahead = not same_host and silent < 0  # its clock runs ahead of this machine's
        if ahead:
            silent = _seconds_seen_unchanged(path, holder)
        if same_host and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
            gone = "is no longer running"
        elif not same_host and silent > STALE_AFTER_SECONDS:
            gone = (f"has not refreshed it for {silent / 60:.0f} minutes"
                    + (" as this machine has watched it (their clock runs ahead)"
                       if ahead else "") + " (its machine is gone)")
        else:
            gone = ""
        if gone:
            if _remove_if_still(path, holder, mine["token"]):
                print(f"The lock of {root} was left by {describe(holder)}, which {gone}: "
                      "taken over.", file=sys.stderr)
            continue
        if same_host:
            raise RunFolderBusyError(
                f"{root} is in use by {describe(holder)}: wait for it to end, or stop it "
                "(a notebook kernel that stopped with an error holds it until you restart "
                "or shut down that kernel). If no study or notebook runs on it (the process "
                f"number was reused), delete {path}.")
        if ahead:
            raise RunFolderBusyError(
                f"{root} is in use by {describe(holder)}, whose clock runs ahead of this "
                f"machine's, so the age of its lock cannot be read from its time: this machine "
                f"has seen it unchanged for {silent:.0f} s. If that machine is gone, the lock "
                f"counts as stale once this machine has seen it unchanged for "
                f"{STALE_AFTER_SECONDS // 60} minutes (run again then); or delete {path}.")
        raise RunFolderBusyError(
            f"{root} is in use by {describe(holder)}, which refreshed its lock {silent:.0f} s "
            f"ago: wait for it to end. If that machine is gone, the lock counts as stale "
            f"{STALE_AFTER_SECONDS // 60} minutes after its last refresh; or delete {path}.")
    raise RunFolderBusyError(f"Could not take the lock {path}: run again.")


def release(root: str | os.PathLike) -> None:
    """Give back one acquisition of the lock of ``root``; the last removes it if still ours."""
    root = Path(root).resolve()
    if root not in _held:
        return
    _held[root][1] -= 1
    if _held[root][1] > 0:
        return
    token = _held.pop(root)[0]
    path = lock_path(root)
    holder = _read_holder(path)
    if token is not None and holder and holder.get("token") == token:
        path.unlink(missing_ok=True)


def token(root: str | os.PathLike) -> str | None:
    """The token of the lock this process holds on ``root`` (for LOCK_VARIABLE), or None."""
    entry = _held.get(Path(root).resolve())
    return entry[0] if entry else None


def holder_token(root: str | os.PathLike) -> str | None:
    """The token of the lock this process writes ``root`` under: its own, or its parent's
    (LOCK_VARIABLE); None when it holds none."""
    if Path(root).resolve() not in _held:
        return None
    return token(root) or os.environ.get(LOCK_VARIABLE)


@contextlib.contextmanager
def acting_for(root: str | os.PathLike, holder: str | None) -> Iterator[None]:
    """Write ``root`` under the lock whose token is ``holder``, held by another process (the
    notebook that sent this process a training): RunFolderBusyError when that lock is gone or
    now another's, so a worker never writes a folder its sender no longer holds."""
    root = Path(root).resolve()
    found = _read_holder(lock_path(root))
    if holder is None or found is None or found.get("token") != holder:
        now = describe(found) if found else "no lock"
        raise RunFolderBusyError(
            f"The lock of {root} is no longer the one held by the notebook that sent this "
            f"training (now: {now}): nothing written. Run that notebook again.")
    _held.setdefault(root, [None, 0])[1] += 1
    try:
        yield
    finally:
        release(root)


@contextlib.contextmanager
def held(root: str | os.PathLike, purpose: str) -> Iterator[None]:
    """The lock of ``root`` for the duration of a ``with`` block."""
    acquire(root, purpose)
    try:
        yield
    finally:
        release(root)


@atexit.register
def _release_all() -> None:
    for root in list(_held):
        _held[root][1] = 1
        release(root)
