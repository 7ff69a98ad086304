"""The run folder's lock: one writer, stale locks taken over, a parent's lock passed on."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from helpers import runlock
from helpers.errors import DataError
from tests.conftest import REPOSITORY


def _write_lock(root, *, pid, host, age_seconds=0):
    path = runlock.lock_path(root)
    path.write_text(json.dumps({"pid": pid, "host": host, "purpose": "training cnn",
                                "started": "2026-11-28T10:00:00", "token": "theirs"}))
    past = time.time() - age_seconds
    os.utime(path, (past, past))
    return path


def _fast_heartbeat(monkeypatch, recheck_seconds: float = 0.1) -> None:
    """A heartbeat every 0.05 s (a new thread), re-reading a missing lock for RECHECK."""
    monkeypatch.setattr(runlock, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(runlock, "RECHECK_SECONDS", recheck_seconds)
    monkeypatch.setattr(runlock, "_heartbeat", None)


def _without_hard_links(monkeypatch) -> None:
    """As on a mounted Drive, which refuses os.link."""
    def no_links(source, target):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(runlock.os, "link", no_links)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_lock_of_a_dead_process_on_this_host_is_said_and_taken_over(tmp_path, capsys):
    _write_lock(tmp_path, pid=_dead_pid(), host=socket.gethostname())
    with runlock.held(tmp_path, "a study"):
        assert json.loads(runlock.lock_path(tmp_path).read_text())["pid"] == os.getpid()
    assert "no longer running: taken over" in capsys.readouterr().err
    assert not runlock.lock_path(tmp_path).exists()


def test_a_lock_of_another_host_is_refused_until_it_goes_silent(tmp_path, capsys):
    """A Colab machine gone after a disconnect cannot be asked: its lock counts as stale
    once its holder stopped refreshing it."""
    _write_lock(tmp_path, pid=123, host="colab-vm-gone", age_seconds=30)
    with pytest.raises(runlock.RunFolderBusyError, match="process 123 on colab-vm-gone"):
        runlock.acquire(tmp_path, "a study")
    _write_lock(tmp_path, pid=123, host="colab-vm-gone",
                age_seconds=runlock.STALE_AFTER_SECONDS + 60)
    with runlock.held(tmp_path, "a study"):
        pass
    assert "has not refreshed it for 11 minutes" in capsys.readouterr().err


def test_a_lock_of_a_host_whose_clock_runs_ahead_goes_stale_by_this_machines_clock(
        tmp_path, capsys):
    """Its refresh times lie in our future: its silence is timed as this machine sees the
    lock unchanged, never as a negative age that never grows stale."""
    path = _write_lock(tmp_path, pid=7, host="clock-ahead", age_seconds=-7200)
    for _ in range(2):
        with pytest.raises(runlock.RunFolderBusyError, match="whose clock runs ahead") as busy:
            runlock.acquire(tmp_path, "a study")
        assert "refreshed its lock" not in str(busy.value)  # no negative age said
    seen = next(tmp_path.glob(".lock.seen-*"))
    record = json.loads(seen.read_text())
    # The holder refreshes (its time moves): the watch starts again.
    later = time.time() + 7300
    os.utime(path, (later, later))
    with pytest.raises(runlock.RunFolderBusyError, match="unchanged for 0 s"):
        runlock.acquire(tmp_path, "a study")
    # Unchanged for longer than the stale time, as this machine has watched it: taken over.
    record = json.loads(seen.read_text())
    record["first_seen"] -= runlock.STALE_AFTER_SECONDS + 60
    seen.write_text(json.dumps(record))
    with runlock.held(tmp_path, "a study"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
        assert not seen.exists()
    assert "as this machine has watched it (their clock runs ahead)" in capsys.readouterr().err


def test_the_holder_refreshes_its_lock(tmp_path, monkeypatch):
    _fast_heartbeat(monkeypatch)
    with runlock.held(tmp_path, "a study"):
        path = runlock.lock_path(tmp_path)
        os.utime(path, (time.time() - 3600, time.time() - 3600))
        time.sleep(0.5)
        assert time.time() - path.stat().st_mtime < 5


def test_a_child_given_the_token_writes_under_its_parents_lock(tmp_path):
    child = ("import sys; from helpers import runlock\n"
             "runlock.acquire(sys.argv[1], 'kernel'); runlock.release(sys.argv[1])")
    with runlock.held(tmp_path, "a study"):
        refused = subprocess.run([sys.executable, "-c", child, str(tmp_path)],
                                 capture_output=True, text=True, cwd=REPOSITORY)
        assert refused.returncode != 0 and f"process {os.getpid()}" in refused.stderr
        environment = {**os.environ, runlock.LOCK_VARIABLE: runlock.token(tmp_path)}
        allowed = subprocess.run([sys.executable, "-c", child, str(tmp_path)],
                                 capture_output=True, text=True, cwd=REPOSITORY,
                                 env=environment)
        assert allowed.returncode == 0, allowed.stderr
        assert runlock.lock_path(tmp_path).exists()  # the child did not remove its parent's
    assert not runlock.lock_path(tmp_path).exists()


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_stale_lock_replaced_meanwhile_by_a_live_one_is_not_removed(tmp_path, monkeypatch,
                                                                     hard_links):
    """Two processes that both judged a lock stale: the second must not remove the lock the
    first has just made, on a file system with hard links or without (a mounted Drive)."""
    if not hard_links:
        _without_hard_links(monkeypatch)
    stale = {"token": "stale-one"}
    path = _write_lock(tmp_path, pid=_dead_pid(), host=socket.gethostname())
    fresh = json.loads(path.read_text()) | {"token": "fresh-one"}
    path.write_text(json.dumps(fresh))  # another process took it over meanwhile
    assert not runlock._remove_if_still(path, stale, "mine")
    assert json.loads(path.read_text())["token"] == "fresh-one"
    assert sorted(os.listdir(tmp_path)) == [runlock.LOCK_NAME]


def test_a_holder_whose_lock_was_taken_over_says_so(tmp_path, monkeypatch, capsys):
    _fast_heartbeat(monkeypatch)
    with runlock.held(tmp_path, "a study"):
        _write_lock(tmp_path, pid=123, host="elsewhere")  # taken over while this one slept
        time.sleep(0.5)  # about ten heartbeats: said once, not at each
        assert capsys.readouterr().err.count("no longer this process's") == 1
    assert runlock.lock_path(tmp_path).exists()  # the other's lock stays


def test_a_run_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(runlock.tempfile, "mkstemp", read_only)
    with pytest.raises(DataError, match="Cannot write in the run"):
        runlock.acquire(tmp_path / "run", "a study")


def test_a_lock_acquired_twice_stays_until_its_last_release(tmp_path):
    runlock.acquire(tmp_path, "a study")
    runlock.acquire(tmp_path, "a notebook of it")
    runlock.release(tmp_path)
    assert runlock.lock_path(tmp_path).exists()  # the outer holder still writes
    runlock.release(tmp_path)
    assert not runlock.lock_path(tmp_path).exists()


def test_a_release_leaves_a_lock_taken_over_before_the_heartbeat_noticed(tmp_path):
    with runlock.held(tmp_path, "a study"):
        _write_lock(tmp_path, pid=123, host="elsewhere")  # token "theirs", just now
    assert json.loads(runlock.lock_path(tmp_path).read_text())["token"] == "theirs"


def test_a_wrong_inherited_token_does_not_count_as_the_parents_lock(tmp_path, monkeypatch):
    _write_lock(tmp_path, pid=os.getppid(), host=socket.gethostname())  # alive, token "theirs"
    monkeypatch.setenv(runlock.LOCK_VARIABLE, "not-theirs")
    with pytest.raises(runlock.RunFolderBusyError, match=f"process {os.getppid()}"):
        runlock.acquire(tmp_path, "a kernel")
    monkeypatch.setenv(runlock.LOCK_VARIABLE, "theirs")
    runlock.acquire(tmp_path, "a kernel")  # the parent's: counted, never removed by the child
    runlock.release(tmp_path)
    assert json.loads(runlock.lock_path(tmp_path).read_text())["token"] == "theirs"


def test_a_worker_writes_only_under_the_lock_its_sender_still_holds(tmp_path):
    with runlock.held(tmp_path, "a notebook"):
        sender = runlock.token(tmp_path)
        with (pytest.raises(runlock.RunFolderBusyError, match="no longer the one held"),
              runlock.acting_for(tmp_path, "another-token")):
            pass
    _write_lock(tmp_path, pid=123, host="elsewhere")  # the sender's lock is gone, another's
    with (pytest.raises(runlock.RunFolderBusyError, match="process 123 on elsewhere"),
          runlock.acting_for(tmp_path, sender)):
        pass


def test_another_hosts_lock_silent_for_less_than_the_stale_time_is_refused(tmp_path):
    # Silent for longer than a heartbeat but not yet stale: a machine slow to refresh is live.
    _write_lock(tmp_path, pid=123, host="colab-vm", age_seconds=runlock.STALE_AFTER_SECONDS - 60)
    with pytest.raises(runlock.RunFolderBusyError, match="process 123 on colab-vm"):
        runlock.acquire(tmp_path, "a study")


def test_a_process_of_another_user_counts_as_alive(monkeypatch):
    def not_permitted(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(runlock.os, "kill", not_permitted)
    assert runlock._alive(4242)


def test_a_holder_whose_lock_was_deleted_says_so(tmp_path, monkeypatch, capsys):
    _fast_heartbeat(monkeypatch)
    with runlock.held(tmp_path, "a study"):
        runlock.lock_path(tmp_path).unlink()  # someone followed "delete .lock" too early
        time.sleep(0.5)
        assert "no longer this process's (now: none)" in capsys.readouterr().err


def test_a_lock_missing_for_a_moment_at_a_heartbeat_stays_held(tmp_path, monkeypatch, capsys):
    """Another process judging it stale moves it aside and back: its holder keeps it."""
    _fast_heartbeat(monkeypatch, recheck_seconds=2.0)
    with runlock.held(tmp_path, "a study"):
        path = runlock.lock_path(tmp_path)
        aside = path.with_name(f"{runlock.LOCK_NAME}.stale-other")
        os.replace(path, aside)
        time.sleep(0.3)  # several heartbeats see no lock
        os.link(aside, path)
        aside.unlink()
        time.sleep(0.3)
        assert "no longer" not in capsys.readouterr().err
        assert runlock.token(tmp_path) is not None  # not given up as lost
    assert not path.exists()  # released as its own


def test_a_clock_ahead_holder_that_keeps_refreshing_is_never_taken_over(tmp_path):
    """Watched unchanged for the stale time, then refreshed: the watch starts again."""
    path = _write_lock(tmp_path, pid=7, host="clock-ahead", age_seconds=-7200)
    with pytest.raises(runlock.RunFolderBusyError, match="whose clock runs ahead"):
        runlock.acquire(tmp_path, "a study")
    seen = next(tmp_path.glob(".lock.seen-*"))
    record = json.loads(seen.read_text())
    record["first_seen"] -= runlock.STALE_AFTER_SECONDS + 60
    seen.write_text(json.dumps(record))
    later = time.time() + 7300
    os.utime(path, (later, later))  # the holder refreshed since this machine first saw it
    with pytest.raises(runlock.RunFolderBusyError, match="unchanged for 0 s"):
        runlock.acquire(tmp_path, "a study")
    assert json.loads(path.read_text())["token"] == "theirs"


def test_a_live_process_on_this_host_keeps_its_lock_however_long_unrefreshed(tmp_path):
    # A laptop that slept: its process lives, its lock was not touched for an hour.
    _write_lock(tmp_path, pid=os.getppid(), host=socket.gethostname(), age_seconds=3600)
    with pytest.raises(runlock.RunFolderBusyError, match=f"process {os.getppid()}"):
        runlock.acquire(tmp_path, "a study")


@pytest.mark.parametrize("content", ["{not json", "[]"])
def test_an_unreadable_lock_is_refused_naming_the_file(tmp_path, content):
    runlock.lock_path(tmp_path).write_text(content)
    with pytest.raises(runlock.RunFolderBusyError, match="which is not readable"):
        runlock.acquire(tmp_path, "a study")


def test_a_lock_released_while_this_process_looked_is_taken(tmp_path, monkeypatch):
    create, tries = runlock._create, []

    def released_meanwhile(path, holder):  # the first try finds a lock, gone when read
        tries.append(path)
        return len(tries) > 1 and create(path, holder)

    monkeypatch.setattr(runlock, "_create", released_meanwhile)
    with runlock.held(tmp_path, "a study"):
        assert json.loads(runlock.lock_path(tmp_path).read_text())["pid"] == os.getpid()
    assert len(tries) == 2


def test_without_hard_links_a_lock_is_still_created_only_once(tmp_path, monkeypatch):
    """A mounted Drive refuses os.link: the lock is created exclusively instead."""
    _without_hard_links(monkeypatch)
    with runlock.held(tmp_path, "a study"):
        assert json.loads(runlock.lock_path(tmp_path).read_text())["pid"] == os.getpid()
    _write_lock(tmp_path, pid=os.getppid(), host=socket.gethostname())  # alive
    with pytest.raises(runlock.RunFolderBusyError, match=f"process {os.getppid()}"):
        runlock.acquire(tmp_path, "a study")
    assert json.loads(runlock.lock_path(tmp_path).read_text())["token"] == "theirs"


def test_a_lock_leaves_no_other_file_in_the_run_folder(tmp_path):
    with runlock.held(tmp_path, "a study"):
        assert os.listdir(tmp_path) == [runlock.LOCK_NAME]
    assert os.listdir(tmp_path) == []


def test_a_live_holder_refreshes_several_times_before_its_lock_counts_as_stale():
    assert runlock.STALE_AFTER_SECONDS >= 5 * runlock.HEARTBEAT_SECONDS


def test_a_child_writes_under_its_parents_token(tmp_path, monkeypatch):
    _write_lock(tmp_path, pid=os.getppid(), host=socket.gethostname())  # the parent's
    monkeypatch.setenv(runlock.LOCK_VARIABLE, "theirs")
    assert runlock.holder_token(tmp_path) is None  # not acquired yet
    with runlock.held(tmp_path, "a kernel"):
        assert runlock.holder_token(tmp_path) == "theirs"


def test_a_worker_acting_for_its_sender_leaves_the_senders_lock(tmp_path):
    _write_lock(tmp_path, pid=123, host="the-notebooks-machine")  # the sender's, token "theirs"
    with runlock.acting_for(tmp_path, "theirs"):
        pass
    assert runlock.lock_path(tmp_path).exists()  # the sender releases it, never the worker


def test_a_lock_acquired_twice_is_removed_when_the_process_exits(tmp_path):
    child = ("import sys; from helpers import runlock\n"
             "runlock.acquire(sys.argv[1], 'a study'); runlock.acquire(sys.argv[1], 'a notebook')")
    ended = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True,
                           text=True, cwd=REPOSITORY)
    assert ended.returncode == 0, ended.stderr
    assert not runlock.lock_path(tmp_path).exists()
