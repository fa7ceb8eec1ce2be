"""Group commit: one flush for the instances that arrive together on several associations.

C-STORE Success may leave only once the instance is on disk, and a sender sends its next instance
only after the response, so one association costs one flush per instance whatever we do.  With
several associations at once (four modalities, or one that opens four), their instances reach the
flush at about the same time.  :class:`GroupFlush` lets them share it, the way a database's group
commit shares a log flush:

* a caller that finds no flush running flushes at once (``fdatasync`` of its own file: alone, it
  pays exactly what it paid before);
* callers that arrive while a flush runs queue up; when it ends, one of them flushes for all of
  them with a single ``syncfs`` of the spool's file system (Linux: writes back every dirty page of
  that file system and flushes the disk's cache once; since Linux 5.8 it reports a writeback
  error of any file, so an error reaches every caller of the group);
* every caller returns only after a flush that *began after its data was written* has ended.

Where ``syncfs`` is not available the group's files are flushed one by one by the leader (no gain,
no loss).  ``syncfs`` flushes whatever else is dirty on that file system too, so the spool is best
on a file system of its own (docs/dicom-gateway.md).  ``dicom.storage.group_commit`` turns it
on; it is off by default: on our 2-core VM, where four associations are bound by the CPU and a
slot's flush costs ~0.3-0.5 ms, ``syncfs`` cost more than the flushes it saved.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from typing import Callable


def _syncfs() -> Callable[[int], None] | None:
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).syncfs
    except (AttributeError, OSError, TypeError):
        return None
    function.argtypes = (ctypes.c_int,)

    def syncfs(fd: int) -> None:
        if function(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"syncfs: {os.strerror(errno)}")
    return syncfs


SYNCFS = _syncfs()


class _Waiter:
    __slots__ = ("fd", "done", "error")

    def __init__(self, fd: int) -> None:
        self.fd, self.done = fd, False
        self.error: BaseException | None = None


class GroupFlush:
    """Flushes files' data for callers in several threads, sharing one flush among those that wait
    together.  ``groups`` and ``grouped`` count flushes and the files they covered (for benchmarks
    and tests)."""

    def __init__(self, syncfs: Callable[[int], None] | None = SYNCFS) -> None:
        self._syncfs = syncfs
        self._cond = threading.Condition()
        self._queue: list[_Waiter] = []
        self._flushing = False
        self.groups = self.grouped = 0

    def flush(self, fd: int) -> None:
        """Return once the data written to ``fd`` so far is on disk; raise the flush's error."""
        waiter = _Waiter(fd)
        with self._cond:
            self._queue.append(waiter)
            self._cond.wait_for(lambda: waiter.done or not self._flushing)
            if waiter.done:
                if waiter.error is not None:
                    raise waiter.error
                return
            group, self._queue, self._flushing = self._queue, [], True  # this caller leads the group
        error: BaseException | None = None
        try:
            self._flush_group(group)
        except BaseException as exc:  # every member of the group learns it; none passes as flushed
            error = exc
            raise
        finally:
            with self._cond:
                for member in group:
                    member.done, member.error = True, error
                self._flushing = False
                self.groups += 1
                self.grouped += len(group)
                self._cond.notify_all()

    def _flush_group(self, group: list[_Waiter]) -> None:
        if len(group) == 1 or self._syncfs is None:
            for member in group:
                os.fdatasync(member.fd)
        else:
            self._syncfs(group[0].fd)
