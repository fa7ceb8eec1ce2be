"""The embedded MQTT broker used when no external broker is configured (``mqtt.url: null``).

Demo only. amqtt runs in its own thread and event loop with anonymous access: no
authentication, no ACL, no TLS. Whoever reaches it can publish vitals and alerts and subscribe
to ``#``, so it binds a loopback address (``mqtt.embedded_host``) or refuses to start, and says
so with a warning at every start. It is the zero-install default for a laptop or a demo;
hospitals point ``mqtt.url`` at their broker, configured as ``deploy/mosquitto/`` shows
(password file, per-device ACL, TLS listener; docs/security.md).
"""
from __future__ import annotations

import asyncio
import logging
import threading

from iomt.config import is_loopback

log = logging.getLogger("medgate.mqtt.broker")

DEMO_WARNING = ("embedded MQTT broker on %s:%d is DEMO ONLY: no authentication, no ACL, no TLS; "
                "any local process can publish vitals and alerts and read every message. "
                "Set mqtt.url to the hospital's broker (docs/security.md, deploy/mosquitto/).")


class EmbeddedBroker:
    """Start/stop an amqtt broker on ``host:port`` (loopback only) in a background thread.

    Raises
    ------
    ValueError
        When ``host`` is not a loopback address (``mqtt.embedded_host``).
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        if not is_loopback(host):
            raise ValueError(f"mqtt.embedded_host must be a loopback address (127.0.0.1, ::1 or "
                             f"localhost): the embedded broker is demo only, with no authentication, "
                             f"ACL or TLS; set mqtt.url to the hospital's broker; {host!r} is given.")
        self.host, self.port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout_s: float = 15.0) -> None:
        self._thread = threading.Thread(target=self._run, name="medgate-broker", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise RuntimeError(f"embedded MQTT broker did not start within {timeout_s} s")
        if self._error:
            raise RuntimeError(f"embedded MQTT broker failed to start: {self._error}")
        log.warning(DEMO_WARNING, self.host, self.port)

    def _run(self) -> None:
        from amqtt.broker import Broker

        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        try:
            self._broker = Broker(config, loop=self._loop)
            self._loop.run_until_complete(self._broker.start())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()

    def stop(self) -> None:
        if not self._loop or not self._broker:
            return
        future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        try:
            future.result(timeout=10)
        except Exception:  # noqa: BLE001 - shutting down anyway
            log.exception("embedded broker shutdown")
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(timeout=10)
