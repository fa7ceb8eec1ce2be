"""A gateway node that loses PostgreSQL stops acknowledging and recovers by itself; nothing it
acknowledged is lost.

The node reaches the database through a TCP forwarder that the test cuts (every connection dropped,
new ones refused) and restores: the database is unreachable from this node only, as when its
network fails.  DCMTK ``storescu`` plays the modality.
"""
from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

import numpy as np

from dicom_gateway import ledger
from dicom_gateway.scp import DATABASE_UNAVAILABLE, StorageScp
from dicom_gateway.status import StoreStatus
from dicom_gateway.store import GatewayStore
from dicom_testdata import make_ct_series
from gateway_helpers import store_statuses
from kernel.database import open_database
from peers import free_port, require_peer, storescu, wait_until


class Forwarder:
    """127.0.0.1:``port`` forwarded to 127.0.0.1:``upstream_port``; :meth:`cut` drops every
    connection and refuses new ones, :meth:`restore` accepts again."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port, self.port = upstream_port, free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        server, self._server = self._server, None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in [server, *sockets] if server is not None else sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        for s in (source, target):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def instance_files(folder: Path, count: int) -> list[Path]:
    """``count`` single-instance studies that no model reads (Modality OT: no routing, no geometry)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        (ds,) = make_ct_series(np.full((1, 16, 16), n, np.uint16))
        ds.Modality = "OT"
        paths.append(folder / f"i{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def test_a_node_that_loses_the_database_refuses_c_store_and_recovers_by_itself(tmp_path, postgres_url, caplog):
    require_peer("storescu", "dcmtk")
    caplog.set_level(logging.INFO, logger="medgate.dicom")
    upstream = int(postgres_url.rsplit(":", 1)[1].split("/", 1)[0])
    forwarder = Forwarder(upstream)
    url = postgres_url.replace(f":{upstream}/", f":{forwarder.port}/")
    store = GatewayStore(open_database(url))
    scp = StorageScp("MEDGATE", "127.0.0.1", free_port(), store, tmp_path / "spool", lambda study, model: None,
                     quiet_period_s=0.5, poll_interval_s=0.05, node_id="node-a")
    scp.start()
    first, acknowledged, refused, after = instance_files(tmp_path / "in", 4)
    ct = make_ct_series(np.zeros((1, 16, 16), np.uint16))[0]
    ct.save_as(tmp_path / "in" / "ct.dcm", enforce_file_format=True)
    try:
        assert store_statuses(scp.port, first) == [StoreStatus.SUCCESS]
        forwarder.cut()  # the node's network to PostgreSQL fails
        # a CT slice's series geometry is read from the database before the file is kept: refused
        assert store_statuses(scp.port, tmp_path / "in" / "ct.dcm") == [StoreStatus.OUT_OF_RESOURCES]
        assert "refused (0xA700 OUT_OF_RESOURCES): database unavailable" in caplog.text
        # otherwise the file is durable before the row is written: this one is acknowledged, its row waits
        assert store_statuses(scp.port, acknowledged) == [StoreStatus.SUCCESS]
        assert scp.recorder.unavailable is not None
        # from then on: refused, Out of Resources, the comment naming the database; nothing is kept
        answer = storescu(scp.port, refused, extra=("-d", "-R", "-nh"))
        assert "0xa700" in answer.stdout + answer.stderr and DATABASE_UNAVAILABLE in answer.stdout + answer.stderr
        assert "refused: the database is unavailable" in caplog.text and DATABASE_UNAVAILABLE.startswith("database")
        spooled = {p.name for p in (tmp_path / "spool").glob("*/*.dcm")}
        assert len(spooled) == 2  # the first two; the refused ones left nothing
        forwarder.restore()  # the database layer re-opens its connection (kernel.database_pg)
        wait_until(lambda: scp.recorder.unavailable is None, timeout_s=20)  # no restart
        assert store_statuses(scp.port, after) == [StoreStatus.SUCCESS]
        scp.recorder.flush()
        assert ledger.unrecorded_files(store, tmp_path / "spool") == []  # the acknowledged one recorded too
        assert len(store.database.rows("SELECT sop_instance_uid FROM instances")) == 3
    finally:
        forwarder.cut()
        scp.stop()
        try:
            store.close()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close
            pass
