"""What answers HTTP on ``http.host:http.port`` (``http.proxy``).

- ``ray``: Ray Serve's own proxy (uvicorn in a proxy actor), which hands each request to an
  ingress replica by a Ray actor call.
- ``direct``: the node's one ingress replica serves ``http.host:http.port`` itself (Ray Serve's
  direct ingress, its port range narrowed to ``http.port``), so the caller's connection reaches the
  ingress and its address is the one audited.  Ray Serve 2.60 still starts its proxy actor, on an
  ephemeral port (:func:`start_options`).
- ``haproxy``: Ray Serve's HAProxy mode (Ray >= 2.55): Debian's ``haproxy`` listens there and sends
  each request to an ingress replica's own HTTP port.

``direct`` and ``haproxy`` call the model replicas over gRPC instead of Ray actor calls (Ray Serve's
throughput-optimised mode).  Ray reads these switches from the environment of the processes it
starts, so :func:`proxy_environment` is set before Ray starts (a joined cluster's nodes would need
them in their ``ray start`` environment).  What each mode opens: docs/security.md ("HTTP proxy
modes"); what each gains: docs/serving.md ("Performance").  Stdlib only.
"""
from __future__ import annotations

import logging
import shutil
import socket
import time
from pathlib import Path

#: Largest message between replicas over gRPC: 1 GiB, a 600-slice 512x512 CT as float32 and more
#: (gRPC's default of 4 MiB refused an 80-slice one; Ray Serve's own ceiling is 2 GiB).
GRPC_MAX_MESSAGE_BYTES = 2**30
log = logging.getLogger("medgate.http")

#: How long `medgate serve` waits for ``http.port`` in the direct mode: after a kill -9 the old
#: ingress replica kept it about a minute (tests/reliability/test_faults.py, kill twice).
PORT_WAIT_S = 120.0
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
        # user code on a thread of its own, as with Ray Serve's proxy: the guard's and the audit's
        # database calls then never block the loop that answers the replica's health checks
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1",
        # the mode freezes the garbage collector after the first reconfigure; a swapped-out model
        # version's reference cycles would then never be freed
        "RAY_SERVE_FREEZE_GC_ON_STARTUP": "0",
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
    """``serve.start``'s arguments: the ``http_options`` (with ``direct``, an ephemeral port for Ray
    Serve's proxy actor, as the ingress replica holds ``http.port``) and, on a cluster, a proxy per node."""
    options = {"http_options": http_options(http)}
    if http.proxy == "direct":
        # Ray Serve 2.60 starts its proxy actor in this mode too (on one machine its controller makes
        # proxy_location Disabled HeadOnly), on http_options' port, which would take http.port before
        # the replica: it gets an ephemeral one (the same application behind the same guard); the
        # replica's port comes from the range proxy_environment sets.
        options["http_options"]["port"] = 0
    elif on_cluster:
        options["proxy_location"] = "EveryNode"
    return options


def check_port_free(http, wait_s: float = PORT_WAIT_S) -> None:
    """With ``direct``, wait up to ``wait_s`` for ``http.host:http.port`` to be free, then fail naming
    it (Ray Serve would say only "No available ports" and keep the port blocked for the ingress).
    The wait covers the Ray workers of a server that was just killed, which exit seconds later.

    Raises
    ------
    RuntimeError
        The port is still taken after ``wait_s``.
    """
    if http.proxy != "direct":
        return
    family = socket.AF_INET6 if ":" in http.host else socket.AF_INET
    deadline, waited = time.monotonic() + wait_s, False
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((http.host, http.port))
                return
            except OSError as exc:
                reason = exc.strerror
        if not waited:
            waited = True
            log.warning("http.port %s on %s is still taken (%s): waiting up to %.0f s (the ingress replica of a "
                        "server that was killed keeps it for about a minute)", http.port, http.host, reason, wait_s)
        if time.monotonic() >= deadline:
            raise RuntimeError(f"http.port {http.port} on {http.host} is not free ({reason}) after {wait_s:.0f} s: "
                               f"another process listens there; stop it or set http.port")
        time.sleep(0.5)
