"""Saving benchmark figures: JSON with the machine and date, plus a PNG plot."""
from __future__ import annotations

import json
import os
import platform
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    """A free loopback TCP port for a server the benchmark starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    return {"node": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "cpu_model": cpu_model(), "python": platform.python_version(), "system": platform.platform()}


def save_figures(name: str, figures: dict[str, Any], plot: Callable | None = None, panels: int = 1) -> Path:
    """Write ``results/<name>.json`` (figures + machine + UTC date) and ``<name>.png`` if ``plot``;
    with ``panels`` > 1, ``plot`` gets that many axes, one above the other."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), **figures}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(panels, 1, figsize=(7, 4 * panels), squeeze=True)
        plot(ax)
        (ax if panels == 1 else ax[0]).set_title(f"{name} - {record['machine']['node']} {record['date'][:10]}")
        fig.tight_layout()
        fig.savefig(RESULTS / f"{name}.png", dpi=100)
        plt.close(fig)
    print(f"saved {path}")
    return path
