"""Group commit: callers that wait together share one flush; alone, a caller flushes its own file."""
from __future__ import annotations

import os
import threading
import time

import pytest

from dicom_gateway.group_flush import SYNCFS, GroupFlush


@pytest.fixture
def files(tmp_path):
    fds = [os.open(tmp_path / f"f{index}", os.O_RDWR | os.O_CREAT) for index in range(8)]
    yield fds
    for fd in fds:
        os.close(fd)


def test_a_caller_alone_flushes_its_own_file_once(files):
    calls = []
    group = GroupFlush(syncfs=lambda fd: calls.append(fd))
    os.write(files[0], b"x")
    group.flush(files[0])
    assert calls == [] and (group.groups, group.grouped) == (1, 1)  # fdatasync, not syncfs


def test_callers_arriving_during_a_flush_share_the_next_one(files, monkeypatch):
    flushes: list[tuple[float, float]] = []
    real_fdatasync = os.fdatasync

    def slow_syncfs(fd):
        begin = time.monotonic()
        time.sleep(0.2)
        flushes.append((begin, time.monotonic()))

    def slow_fdatasync(fd):  # the lone first caller holds the flush while the others queue up
        time.sleep(0.3)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    group = GroupFlush(syncfs=slow_syncfs)
    returned: dict[int, tuple[float, float]] = {}

    def commit(fd, delay):
        time.sleep(delay)
        called = time.monotonic()
        group.flush(fd)
        returned[fd] = (called, time.monotonic())

    threads = [threading.Thread(target=commit, args=(fd, 0 if i == 0 else 0.05)) for i, fd in enumerate(files)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(returned) == len(files)
    assert (group.groups, group.grouped) == (2, len(files))  # the lone first, then the seven together
    assert len(flushes) == 1
    for fd, (called, back) in returned.items():
        if fd != files[0]:
            assert flushes[0][0] >= called and back >= flushes[0][1]  # a flush begun after the write


def test_an_error_reaches_every_member_of_the_group(files, monkeypatch):
    gate = threading.Event()
    real_fdatasync = os.fdatasync

    def held(fd):  # the lone first caller's flush waits until the others have queued
        gate.wait(5)
        real_fdatasync(fd)

    def failing_syncfs(fd):
        raise OSError(5, "EIO")

    monkeypatch.setattr(os, "fdatasync", held)
    group = GroupFlush(syncfs=failing_syncfs)
    errors: list[BaseException | None] = []

    def commit(fd):
        try:
            group.flush(fd)
            errors.append(None)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=commit, args=(fd,)) for fd in files[:4]]
    threads[0].start()
    time.sleep(0.1)
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.1)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert len(errors) == 4 and errors.count(None) == 1  # the lone first flushed fine; the group failed
    assert all(isinstance(error, OSError) for error in errors if error is not None)


@pytest.mark.skipif(SYNCFS is None, reason="syncfs is Linux-only")
def test_syncfs_is_found_on_linux(files):
    SYNCFS(files[0])
