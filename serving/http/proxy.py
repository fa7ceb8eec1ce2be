"""What answers HTTP on ``http.host:http.port``: Ray Serve's proxy, or Ray Serve's HAProxy mode.

``http.proxy: ray`` (the default) is Ray Serve's own proxy: uvicorn in a proxy actor, which hands
each request to an ingress replica by a Ray actor call.  ``http.proxy: haproxy`` is Ray Serve's
HAProxy mode (Ray >= 2.55): Debian's ``haproxy`` listens on the same address and sends each request
straight to an ingress replica's own HTTP port (direct ingress), and the ingress calls the model
replicas over gRPC instead of Ray actor calls (``RAY_SERVE_THROUGHPUT_OPTIMIZED``).  Ray reads
these switches from the environment of the processes it starts, so :func:`proxy_environment` is
set before Ray starts (a joined cluster's nodes need them in their ``ray start`` environment).

What the mode opens besides ``http.port`` (each ingress replica's port from 30000 on every
interface, haproxy's statistics page on 8404) is in docs/security.md; what it gains in
docs/serving.md ("Performance").  Stdlib only.
"""
from __future__ import annotations

import shutil
from pathlib import Path

#: Where Debian installs haproxy (``/usr/sbin`` is not on every user's PATH).
DEBIAN_HAPROXY = Path("/usr/sbin/haproxy")


def http_options(http) -> dict:
    """Ray Serve's ``http_options`` from the ``http`` section (bind address, idle and request limits)."""
    options = {"host": http.host, "port": http.port, "keep_alive_timeout_s": http.keep_alive_timeout_s}
    if http.request_timeout_s is not None:
        options["request_timeout_s"] = http.request_timeout_s
    return options


def haproxy_binary(http) -> Path:
    """The haproxy executable of ``http.haproxy_binary``, else on PATH, else Debian's.

    Raises
    ------
    RuntimeError
        None is found: the message names the package and the setting.
    """
    if http.haproxy_binary is not None:
        candidates = [Path(http.haproxy_binary)]
    else:
        on_path = shutil.which("haproxy")
        candidates = ([Path(on_path)] if on_path else []) + [DEBIAN_HAPROXY]
    for path in candidates:
        if path.is_file() and shutil.which(str(path)):
            return path
    raise RuntimeError(f"http.proxy is haproxy but no haproxy executable was found "
                       f"({', '.join(map(str, candidates))}): install Debian's haproxy package, set "
                       f"http.haproxy_binary, or set http.proxy: ray")


def proxy_environment(http) -> dict[str, str]:
    """The Ray Serve environment variables of ``http.proxy`` (none for ``ray``)."""
    if http.proxy != "haproxy":
        return {}
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(haproxy_binary(http)),
        # direct ingress and gRPC between replicas
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # the imaging pipeline calls handles from its worker threads, which need the router's own loop
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
        # haproxy's Prometheus listener would be one more open port; /metrics is the ingress's own
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    }
