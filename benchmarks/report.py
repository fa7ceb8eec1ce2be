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


def machine() -> dict[str, Any]:
    return {"node": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "system": platform.platform()}


def save_figures(name: str, figures: dict[str, Any], plot: Callable | None = None) -> Path:
    """Write ``results/<name>.json`` (figures + machine + UTC date) and ``<name>.png`` if ``plot``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), **figures}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        plot(ax)
        ax.set_title(f"{name} - {record['machine']['node']} {record['date'][:10]}")
        fig.tight_layout()
        fig.savefig(RESULTS / f"{name}.png", dpi=100)
        plt.close(fig)
    print(f"saved {path}")
    return path
