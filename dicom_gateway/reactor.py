"""Event-driven reactors for pynetdicom associations: no sleep-polling on the receive path.

pynetdicom 3.0 runs two loops per association that poll: the DUL reactor
(:meth:`pynetdicom.dul.DULServiceProvider.run_reactor`) checks its socket with a zero-timeout
``select`` and sleeps ``_run_loop_delay`` (1 ms) when idle, and the acceptor's association reactor
(:meth:`pynetdicom.association.Association._run_reactor`) sleeps 1 ms before each look at the DIMSE
queue.  Under load those sleeps, plus the hand-offs between the two threads, put a floor of several
milliseconds under every C-STORE (see ``docs/dicom-gateway.md``, "Ingest speed").

:func:`install` replaces both loops with versions that *block* until there is something to do:

* the DUL waits in ``select`` on the association socket and on a wake-up socket pair that is
  written whenever the service user queues a primitive to send (``to_provider_queue``);
* the association reactor waits on a :class:`threading.Event` set whenever the DUL hands it a DIMSE
  message or an A-RELEASE/A-ABORT primitive.

Both waits keep a short timeout (:data:`IDLE_WAIT_S`) so the ARTIM and idle timers, thread death
and kill requests are still noticed exactly as upstream does.  Everything else (state machine,
PDU decoding, negotiation, service classes) is pynetdicom's own code, unchanged.  The patch is
process-wide and idempotent; :func:`uninstall` restores the originals.
"""
from __future__ import annotations

import logging
import queue
import select
import socket
import threading
import time
from typing import Any, Callable

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ

log = logging.getLogger("medgate.dicom")

#: Longest a reactor blocks without an event before re-checking timers and kill flags.
IDLE_WAIT_S = 0.02

_ORIGINAL: dict[str, Callable] = {}


class _SignallingQueue(queue.Queue):
    """A :class:`queue.Queue` that calls ``signal()`` after every ``put``."""

    def __init__(self, signal: Callable[[], None]) -> None:
        super().__init__()
        self._signal = signal

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._signal()


def _dul_wake(dul: DULServiceProvider) -> None:
    sender = getattr(dul, "_wake_send", None)
    if sender is not None:
        try:
            sender.send(b"\0")
        except OSError:  # the reactor has gone; nothing to wake
            pass


def _association_init(self: Association, *args: Any, **kwargs: Any) -> None:
    _ORIGINAL["association_init"](self, *args, **kwargs)
    wake = threading.Event()
    self._medgate_wake = wake
    self.dimse.msg_queue = _SignallingQueue(wake.set)
    self.dul.to_user_queue = _SignallingQueue(wake.set)
    self.dul._wake_recv, self.dul._wake_send = socket.socketpair()
    self.dul._wake_send.setblocking(False)
    self.dul.to_provider_queue = _SignallingQueue(lambda dul=self.dul: _dul_wake(dul))


def _dul_idle_wait(dul: DULServiceProvider) -> None:
    """Block until the peer sends data, a primitive is queued, or :data:`IDLE_WAIT_S` passes."""
    sock = getattr(dul.socket, "socket", None)
    wake = dul._wake_recv
    watched = [wake] if sock is None else [sock, wake]
    try:
        if sock is not None and getattr(sock, "pending", lambda: 0)():
            return  # TLS: decrypted bytes already buffered, select would not see them
        ready, _, _ = select.select(watched, [], [], IDLE_WAIT_S)
    except (OSError, ValueError):  # closed socket: let the state machine see Evt17
        time.sleep(0.001)
        return
    if wake in ready:
        try:
            while wake.recv(4096):
                if not select.select([wake], [], [], 0)[0]:
                    break
        except OSError:
            pass


def _dul_run_reactor(self: DULServiceProvider) -> None:
    """:meth:`DULServiceProvider.run_reactor` with a blocking idle wait instead of ``sleep``."""
    if not hasattr(self, "_wake_recv"):  # created outside an Association: upstream loop
        return _ORIGINAL["dul_run_reactor"](self)
    self._idle_timer.start()
    idle = False
    try:
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if idle:
                _dul_idle_wait(self)
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:  # noqa: BLE001 - same recovery as upstream: abort
                log.error("exception in the DUL reactor, aborting the association: %s", exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False
    finally:
        self._wake_send.close()
        self._wake_recv.close()


def _dul_kill(self: DULServiceProvider) -> None:
    self._kill_thread = True
    _dul_wake(self)


def _dul_stop(self: DULServiceProvider) -> bool:
    if self.state_machine.current_state == "Sta1":
        self._kill_thread = True
        _dul_wake(self)
        self.join(timeout=5 * IDLE_WAIT_S + 1.0)
        return True
    return False


def _association_run_reactor(self: Association) -> None:
    """The acceptor loop of :meth:`Association._run_reactor`, waiting on an event, not a sleep."""
    wake: threading.Event | None = getattr(self, "_medgate_wake", None)
    if wake is None:
        return _ORIGINAL["association_run_reactor"](self)
    self._is_paused = False
    while not self._kill:
        wake.wait(IDLE_WAIT_S)
        wake.clear()
        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False
        while True:  # drain every complete message before looking at the ACSE queue
            context_id, msg = self.dimse.get_msg(block=False)
            if not msg:
                break
            self._serve_request(msg, context_id)
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            log.debug("association released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return
        if self.acse.is_aborted():
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return
        if not self.dul.is_alive():
            self.kill()
            return
        if self.dul.idle_timer_expired():
            log.error("network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return


def install() -> None:
    """Patch pynetdicom (process-wide, idempotent) to use the event-driven reactors."""
    if _ORIGINAL:
        return
    _ORIGINAL.update(association_init=Association.__init__, association_run_reactor=Association._run_reactor,
                     dul_run_reactor=DULServiceProvider.run_reactor, dul_kill=DULServiceProvider.kill_dul,
                     dul_stop=DULServiceProvider.stop_dul)
    Association.__init__ = _association_init
    Association._run_reactor = _association_run_reactor
    DULServiceProvider.run_reactor = _dul_run_reactor
    DULServiceProvider.kill_dul = _dul_kill
    DULServiceProvider.stop_dul = _dul_stop


def uninstall() -> None:
    """Restore pynetdicom's own reactors."""
    if not _ORIGINAL:
        return
    Association.__init__ = _ORIGINAL["association_init"]
    Association._run_reactor = _ORIGINAL["association_run_reactor"]
    DULServiceProvider.run_reactor = _ORIGINAL["dul_run_reactor"]
    DULServiceProvider.kill_dul = _ORIGINAL["dul_kill"]
    DULServiceProvider.stop_dul = _ORIGINAL["dul_stop"]
    _ORIGINAL.clear()


def installed() -> bool:
    return bool(_ORIGINAL)
