"""Pre-written slot files: an instance made durable by one data flush, with no journal commit.

``fsync`` of a *new* file waits for the file system's journal: its blocks are allocated at the
flush, and the rename and the directory flush wait for it again.  On our VMs that costs more than
DCMTK storescp spends on a whole instance.  A *slot* is a file in ``<spool>/.slots`` whose blocks
were allocated, written (zeros) and flushed ahead of time, in the background.  Writing an
instance into it changes no metadata, so ``fdatasync`` only pushes the data: one flush.

A committed slot is a valid Part 10 file however far the steps after it got::

    [File Meta Information + data set as received][(FFFC,FFFC) Data Set Trailing Padding header]
    [padding value ...                                      trailer: b"MGSLOT01", length, CRC-32]

The trailer (the last 16 bytes of the slot, inside the padding's value, PS3.10 7.2) records the
length of the instance and the CRC-32 of its bytes: it tells a committed slot from one that was
being written when the machine stopped (never acknowledged).

The life of a slot:

1. the refill thread creates slots of the sizes in demand (zeros, ``fsync``, directory ``fsync``),
   in the pauses between instances: while instances arrive it would double the bytes the disk
   writes and slow the flushes they wait for;
2. :meth:`SlotPool.begin` writes the instance into a ready slot and starts its writeback
   (``sync_file_range``), so the disk works while the caller checks the instance;
3. :meth:`SlotWrite.commit` writes the trailer, ``fdatasync`` (the data is on disk: Success may
   be sent; commits on several associations at once share one flush, :mod:`dicom_gateway.group_flush`) and renames the slot into place; the rename is not flushed here;
4. :meth:`SlotWrite.abandon` (the instance was refused): the slot, which has no trailer, is ready
   again;
5. the finisher thread flushes the directories of committed files, then truncates each file to
   its instance's length (the padding goes; both states are valid files);
6. at start, :meth:`SlotPool.recover` moves every slot with a valid trailer to its place (a crash
   came between flush and rename) and deletes the others.

An instance that fits no ready slot (no slot of its size yet, a deflated data set, an odd length)
is written the classic way (:class:`dicom_gateway.storage.DirectWrite`: temp file, fsync, rename,
directory fsync), and its size is asked of the refill thread.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import logging
import os
import struct
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dicom_gateway.config import DicomConfig
from dicom_gateway.group_flush import GroupFlush
from dicom_gateway.storage import Buffers, DirectWrite, as_views, fsync_directory, pwritev_all

_DICOM = DicomConfig()  # the ``dicom:`` section's defaults, the constructor's defaults

log = logging.getLogger("medgate.dicom")

MAGIC = b"MGSLOT01"
TRAILER = struct.Struct("<8sII")  # magic, instance length, CRC-32 of the instance's bytes
#: Data Set Trailing Padding (FFFC,FFFC) OB: implicit VR, explicit VR little and big endian.
_PADDING = {"implicit": struct.Struct("<HHI"), "little": struct.Struct("<HH2s2xI"),
            "big": struct.Struct(">HH2s2xI")}
_IMPLICIT, _DEFLATED, _BIG = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"
#: The most a slot adds to an instance: padding header (12) and trailer.
OVERHEAD = 12 + TRAILER.size
SUFFIX = ".slot"


def _sync_file_range() -> Callable[[int, int, int], None]:
    """``sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)``: start writeback, don't wait
    (Linux); a no-op where libc lacks it."""
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).sync_file_range
    except (AttributeError, OSError, TypeError):
        return lambda fd, offset, length: None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return lambda fd, offset, length: function(fd, offset, length, 2)


start_writeback = _sync_file_range()


def padding_header(transfer_syntax: str, room: int) -> bytes | None:
    """The (FFFC,FFFC) element header whose value fills ``room`` bytes after a data set encoded in
    ``transfer_syntax`` (header included), or None where padding cannot simply follow the data set
    (deflated)."""
    if transfer_syntax == _DEFLATED:
        return None
    if transfer_syntax == _IMPLICIT:
        return _PADDING["implicit"].pack(0xFFFC, 0xFFFC, room - _PADDING["implicit"].size)
    encoding = _PADDING["big" if transfer_syntax == _BIG else "little"]
    return encoding.pack(0xFFFC, 0xFFFC, b"OB", room - encoding.size)


def read_trailer(path: Path) -> int | None:
    """The instance length a committed slot records, or None when it holds no committed instance."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size < OVERHEAD:
            return None
        file.seek(size - TRAILER.size)
        magic, length, crc = TRAILER.unpack(file.read(TRAILER.size))
        if magic != MAGIC or length > size - OVERHEAD:
            return None
        file.seek(0)
        return length if zlib.crc32(file.read(length)) == crc else None


@dataclass
class _Slot:
    path: Path
    size: int


class SlotWrite:
    """An instance written into a slot, not yet flushed: :meth:`commit` or :meth:`abandon` it."""

    def __init__(self, pool: SlotPool, slot: _Slot, buffers: list[memoryview], padding: bytes) -> None:
        self.pool, self.slot, self.length = pool, slot, sum(view.nbytes for view in buffers)
        self._fd = os.open(slot.path, os.O_WRONLY)
        self._done = False
        try:
            pwritev_all(self._fd, buffers + [memoryview(padding)], 0)
            start_writeback(self._fd, 0, self.length + len(padding))
            crc = 0
            for view in buffers:
                crc = zlib.crc32(view, crc)
            self._trailer = TRAILER.pack(MAGIC, self.length, crc)
        except BaseException:
            self.abandon()
            raise

    def commit(self, path: Path) -> None:
        """Flush the instance and put it at ``path``: once this returns, Success may be sent."""
        if self._done:
            raise RuntimeError(f"slot {self.slot.path.name} is already committed or abandoned")
        try:
            os.pwrite(self._fd, self._trailer, self.slot.size - TRAILER.size)
            self.pool.flush(self._fd)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.rename(self.slot.path, path)
        except BaseException:  # not acknowledged: the slot must not pass for an instance, nor be used again
            self._done = True
            try:
                os.pwrite(self._fd, bytes(TRAILER.size), self.slot.size - TRAILER.size)
                self.slot.path.unlink(missing_ok=True)
            finally:
                os.close(self._fd)
            raise
        self._done = True
        self.pool._finish(self._fd, path, self.length)

    def abandon(self) -> None:
        """The instance was refused: the slot (no trailer written) is ready again."""
        if self._done:
            return
        self._done = True
        os.close(self._fd)
        self.pool._give_back(self.slot)


class SlotPool:
    """Ready slots in ``folder``, by size; ``pool_bytes`` bounds what is kept ready for each size
    in demand (at least ``min_slots``, at most ``max_slots``); a size not asked for in ``idle_s``
    is given up and its slots deleted.  Slot sizes are multiples of ``granule`` bytes."""

    def __init__(self, folder: Path, *, pool_bytes: int = _DICOM.storage.slot_pool_bytes, granule: int = 64 << 10,
                 min_slots: int = 4, max_slots: int = 512, batch: int = 16, idle_s: float = 3600.0,
                 finish_interval_s: float = 0.2, refill_pause_s: float = 0.5,
                 group_commit: bool = _DICOM.storage.group_commit) -> None:
        self.folder = Path(folder)
        self.group = GroupFlush() if group_commit else None
        self.pool_bytes, self.granule = int(pool_bytes), int(granule)
        self.min_slots, self.max_slots, self.batch, self.idle_s = min_slots, max_slots, batch, idle_s
        self.finish_interval_s, self.refill_pause_s = finish_interval_s, refill_pause_s
        self._last_take = 0.0  # monotonic time an instance last asked for a slot
        self._ready: dict[int, deque[_Slot]] = {}
        self._wanted: dict[int, float] = {}  # size -> when last asked for
        self._cond = threading.Condition()
        self._finished: list[tuple[int, Path, int]] = []
        self._finish_cond = threading.Condition()
        self._names = itertools.count()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.misses = 0  # instances written the classic way because no slot was ready

    # -- start, stop, recovery ---------------------------------------------------------------------
    def recover(self, place: Callable[[Path], Path]) -> list[Path]:
        """Before :meth:`start`: put each committed slot where ``place(slot_path)`` says (the slot
        was flushed but its rename lost), delete the others; returns the placed paths.  The sizes
        found are asked of the refill thread again."""
        self.folder.mkdir(parents=True, exist_ok=True)
        placed = []
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            size = _size_of(path)
            if size:
                self._wanted[size] = time.monotonic()
            try:
                length = read_trailer(path)
                if length is None:
                    path.unlink()
                    continue
                target = place(path)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                fsync_directory(target.parent)
                os.truncate(target, length)
                placed.append(target)
            except Exception as exc:  # noqa: BLE001 - keep the slot, say why, go on with the others
                log.error("slot %s cannot be recovered: %s", path.name, exc)
        fsync_directory(self.folder)
        if placed:
            log.warning("recovered %d instance(s) flushed before a crash but not yet in place", len(placed))
        return placed

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        self._threads = [threading.Thread(target=self._refill_loop, name="medgate-slots", daemon=True),
                         threading.Thread(target=self._finish_loop, name="medgate-slots-finish", daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        with self._finish_cond:
            self._finish_cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads = []
        self._finish_round()

    def ready_count(self, size: int | None = None) -> int:
        with self._cond:
            return sum(len(slots) for s, slots in self._ready.items() if size is None or s == size)

    def wait_ready(self, length: int, timeout_s: float = 30.0) -> bool:
        """Ask for slots fitting an instance of ``length`` bytes and wait until the pool holds its
        target of them (for benchmarks and tests)."""
        size = self.size_for(length)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._wanted[size] = time.monotonic()
            self._cond.notify_all()
            while len(self._ready.get(size, ())) < self._target(size):
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    return False
        return True

    # -- writing -----------------------------------------------------------------------------------
    def size_for(self, length: int) -> int:
        return -(-(length + OVERHEAD) // self.granule) * self.granule

    def begin(self, buffers: Buffers, transfer_syntax: str) -> SlotWrite | DirectWrite:
        """Start writing the instance ``buffers`` (File Meta Information, then the data set in
        ``transfer_syntax``): into a ready slot when one fits, else the classic way."""
        views = as_views(buffers)
        length = sum(view.nbytes for view in views)
        size = self.size_for(length)
        padding = padding_header(str(transfer_syntax), size - length) if length % 2 == 0 else None
        slot = self._take(size) if padding is not None else None
        if slot is None:
            return DirectWrite(views, fsync=True)
        return SlotWrite(self, slot, views, padding)

    def _take(self, size: int) -> _Slot | None:
        with self._cond:
            self._wanted[size] = self._last_take = time.monotonic()
            ready = self._ready.get(size)
            if ready:
                slot = ready.popleft()
                if len(ready) < self._target(size) // 2:
                    self._cond.notify_all()
                return slot
            self.misses += 1
            self._cond.notify_all()
            return None

    def flush(self, fd: int) -> None:
        """Flush a slot's data: alone, or in a group with the commits of other associations."""
        if self.group is None:
            os.fdatasync(fd)
        else:
            self.group.flush(fd)

    def _give_back(self, slot: _Slot) -> None:
        with self._cond:
            self._ready.setdefault(slot.size, deque()).appendleft(slot)

    def _target(self, size: int) -> int:
        sizes = max(1, len(self._wanted))
        return max(self.min_slots, min(self.max_slots, self.pool_bytes // (sizes * size)))

    # -- refill thread -----------------------------------------------------------------------------
    def _refill_loop(self) -> None:
        while not self._stopping.is_set():
            with self._cond:
                busy_for = self.refill_pause_s - (time.monotonic() - self._last_take)
                if busy_for > 0:  # instances are arriving: refill in the next pause
                    self._cond.wait(busy_for)
                    continue
                self._forget_idle()
                short = {size: self._target(size) - len(self._ready.get(size, ()))
                         for size in self._wanted}
                short = {size: n for size, n in short.items() if n > 0}
                if not short:
                    self._cond.wait(1.0)
                    continue
            size = max(short, key=lambda s: short[s] / self._target(s))
            try:
                slots = self._make(size, min(short[size], self.batch))
            except OSError as exc:
                log.error("cannot prepare slots of %d bytes in %s: %s", size, self.folder, exc)
                self._stopping.wait(5.0)
                continue
            with self._cond:
                if size in self._wanted:
                    self._ready.setdefault(size, deque()).extend(slots)
                else:
                    _unlink(slots)
                self._cond.notify_all()

    def _make(self, size: int, count: int) -> list[_Slot]:
        zeros = memoryview(bytes(size))
        made: list[tuple[_Slot, int]] = []
        try:
            for _ in range(count):
                path = self.folder / f"{size}-{os.getpid()}-{next(self._names)}{SUFFIX}"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                made.append((_Slot(path, size), fd))
                pwritev_all(fd, [zeros], 0)
            for _, fd in made:  # the first flush commits the journal for all of them
                os.fsync(fd)
            fsync_directory(self.folder)
        except BaseException:
            _unlink([slot for slot, _ in made])
            raise
        finally:
            for _, fd in made:
                os.close(fd)
        return [slot for slot, _ in made]

    def _forget_idle(self) -> None:
        now = time.monotonic()
        for size in [s for s, at in self._wanted.items() if now - at > self.idle_s]:
            del self._wanted[size]
            _unlink(self._ready.pop(size, ()))

    # -- finisher thread ---------------------------------------------------------------------------
    def _finish(self, fd: int, path: Path, length: int) -> None:
        with self._finish_cond:
            self._finished.append((fd, path, length))
            self._finish_cond.notify()

    def _finish_loop(self) -> None:
        while not self._stopping.is_set():
            with self._finish_cond:
                if not self._finished:
                    self._finish_cond.wait(1.0)
                    continue
            self._stopping.wait(self.finish_interval_s)  # gather a round
            self._finish_round()

    def _finish_round(self) -> None:
        """Flush the directories of the files committed since the last round (their renames are
        then durable), then cut each file to its instance's length."""
        with self._finish_cond:
            finished, self._finished = self._finished, []
        try:
            for folder in {path.parent for _, path, _ in finished}:
                fsync_directory(folder)
            for fd, _, length in finished:
                os.ftruncate(fd, length)
        except OSError as exc:  # the files stay valid, only longer
            log.error("cannot finish %d slot file(s): %s", len(finished), exc)
        finally:
            for fd, _, _ in finished:
                os.close(fd)


def _size_of(path: Path) -> int | None:
    try:
        return int(path.name.split("-", 1)[0])
    except ValueError:
        return None


def _unlink(slots) -> None:
    for slot in slots:
        slot.path.unlink(missing_ok=True)
