"""What answers HTTP on ``http.host:http.port``: Ray Serve's proxy, the ingress replica itself, or
Ray Serve's HAProxy mode.

``http.proxy: ray`` is Ray Serve's own proxy: uvicorn in a proxy actor, which hands each request to
an ingress replica by a Ray actor call.  ``http.proxy: direct`` starts no proxy: the one ingress
replica of the node serves ``http.host:http.port`` itself (Ray Serve's direct ingress, its port
range narrowed to ``http.port``), so the caller's connection reaches the ingress and its address
is the one audited.  In both ``direct`` and ``haproxy`` the ingress calls the model replicas over
gRPC instead of Ray actor calls (``RAY_SERVE_THROUGHPUT_OPTIMIZED``).  ``http.proxy: haproxy`` is Ray Serve's
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

#: Largest message between replicas over gRPC: 2 GiB - 1, the most gRPC takes (Ray Serve's own
#: limit for its gRPC ingress).
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1
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
    if http.proxy == "ray":
        return {}
    env = {
        # direct ingress and gRPC between replicas
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # the imaging pipeline calls handles from its worker threads, which need the router's own loop
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
        # a CT volume and its label mask cross between replicas whole (84 MB each for 80 x 512^2):
        # gRPC's 4 MiB default refused them (RESOURCE_EXHAUSTED); Ray Serve's own gRPC ceiling instead
        "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(GRPC_MAX_MESSAGE_BYTES),
        # the replicas' log lines (a STOW-RS refusal, a model's version swap) stay in the server's
        # output, as with Ray Serve's proxy (the throughput-optimised mode writes them to files only)
        "RAY_SERVE_LOG_TO_STDERR": "1",
    }
    if http.proxy == "direct":  # the ingress replica's port is http.port and no other (the end is exclusive)
        env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(http.port)
        env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(http.port + 1)
        # a freed port waits out HAProxy's hard stop (150 s) before Ray Serve hands it out again;
        # with no haproxy a restarted ingress replica takes http.port back at once
        env["RAY_SERVE_PORT_QUARANTINE_S"] = "0"
        return env
    return {**env, "RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_BINARY_PATH": str(haproxy_binary(http)),
            # haproxy's Prometheus listener would be one more open port; /metrics is the ingress's own
            "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0"}


def start_options(http, on_cluster: bool) -> dict:
    """``serve.start``'s arguments: the ``http_options`` and where Ray Serve runs its proxies (none
    with ``direct``: the ingress replica holds the port; on a cluster one per node otherwise)."""
    options = {"http_options": http_options(http)}
    if http.proxy == "direct":
        # Ray Serve 2.60 in this mode still starts its proxy actor on http_options' port, which
        # would take http.port before the replica: it gets an ephemeral one (the same application
        # behind the same guard); the replica's port comes from the range proxy_environment sets.
        options["http_options"]["port"] = 0
        options["proxy_location"] = "Disabled"
    elif on_cluster:
        options["proxy_location"] = "EveryNode"
    return options
