"""Resident memory, open file descriptors and threads of a process and everything under it.

Processes are grouped by role, so that a Ray worker replaced by a new pid stays one series:
the server itself, each Ray Serve replica (``ray::ServeReplica:medgate:tb``), the Serve controller
and proxy, raylet, GCS, idle Ray workers and the rest by program name. :func:`growth` fits a line
through a series (the second half of a run, after warm-up) and gives its slope per hour.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
import psutil

#: Ray's process titles: ``ray::ServeReplica:medgate:tb``, ``ray::IDLE``, ``ray::ProxyActor``.
_RAY_TITLE = re.compile(r"^ray::(\S+)")


def role(proc: psutil.Process, root_pid: int) -> str:
    """A stable name for what ``proc`` does in the tree."""
    if proc.pid == root_pid:
        return "server"
    try:
        cmdline = proc.cmdline()
    except (psutil.Error, OSError):
        return "gone"
    title = _RAY_TITLE.match(" ".join(cmdline))
    if title:  # without the method running now: ray::ServeReplica:medgate:tb.handle_request -> ...:tb
        return "ray::" + title.group(1).split(".")[0].rstrip(":")
    if "-c" in cmdline[1:2]:  # multiprocessing: python -c "from multiprocessing.spawn import spawn_main..."
        code = cmdline[2] if len(cmdline) > 2 else ""
        if "resource_tracker" in code:
            return "resource_tracker"
        if "spawn_main" in code:
            try:
                return role(proc.parent(), root_pid) + " child"
            except (psutil.Error, OSError, AttributeError):
                return "spawned child"
    for arg in cmdline[:3]:  # python -m ray... / .../raylet / .../gcs_server
        name = os.path.basename(arg)
        if name and not name.startswith("python") and not name.startswith("-"):
            return name.removesuffix(".py")
    return proc.name()


@dataclass
class Sample:
    """One sample of one role (the sums over its processes)."""

    rss_bytes: int
    fds: int
    threads: int
    processes: int


def sample_tree(root_pid: int) -> dict[str, Sample]:
    """Role -> summed RSS, fds and threads of the live processes under (and including) ``root_pid``."""
    out: dict[str, Sample] = {}
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for proc in procs:
        try:
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                rss, fds, threads = proc.memory_info().rss, proc.num_fds(), proc.num_threads()
            name = role(proc, root_pid)
        except (psutil.Error, OSError):  # exited while being read
            continue
        prev = out.get(name, Sample(0, 0, 0, 0))
        out[name] = Sample(prev.rss_bytes + rss, prev.fds + fds, prev.threads + threads, prev.processes + 1)
    return out


def open_files(pid: int, top: int = 30) -> dict[str, int]:
    """What the fds of ``pid`` point at, counted by kind (socket, pipe, anon_inode, a device, or the
    folder of a regular file as ``folder/*``); the ``top`` most frequent."""
    counts: dict[str, int] = {}
    folder = f"/proc/{pid}/fd"
    try:
        entries = os.listdir(folder)
    except OSError:
        return counts
    for fd in entries:
        try:
            target = os.readlink(f"{folder}/{fd}")
        except OSError:
            continue
        if target.startswith(("socket:", "pipe:", "anon_inode:")):
            kind = target.split(":", 1)[0]
        elif target.startswith(("/dev/", "/proc/")):
            kind = target
        else:
            kind = os.path.dirname(target) + "/*"
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top])


def growth(times_s: list[float], values: list[float]) -> dict[str, float]:
    """Least-squares line through the second half of ``(times_s, values)``: slope per hour, the
    values at the start and end of that half, and r^2 (near 1: steady growth; near 0: noise)."""
    t, v = np.asarray(times_s, dtype=float), np.asarray(values, dtype=float)
    if len(t) >= 2:
        half = t >= t[0] + (t[-1] - t[0]) / 2
        t, v = t[half], v[half]
    if len(t) < 3 or t[-1] == t[0]:
        return {"per_hour": 0.0, "r2": 0.0, "start": float(v[0]) if len(v) else 0.0,
                "end": float(v[-1]) if len(v) else 0.0, "points": int(len(t))}
    slope, intercept = np.polyfit(t, v, 1)
    residual = v - (slope * t + intercept)
    spread = float(((v - v.mean()) ** 2).sum())
    r2 = 1.0 - float((residual ** 2).sum()) / spread if spread > 0 else 0.0
    return {"per_hour": float(slope * 3600), "r2": round(r2, 3), "start": float(v[0]), "end": float(v[-1]),
            "points": int(len(t))}
