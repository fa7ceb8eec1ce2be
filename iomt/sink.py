"""Where the bridge's FHIR resources go: the local store, or the FHIR server via the outbox.

Without ``fhir.base_url`` resources are upserted into the store's ``fhir_resources`` table and
vitals messages into ``vital_signs`` (:mod:`iomt.vital_records`). With it the resources and the
vitals messages' Observations become transaction Bundles (at most ``bundle_max_entries``
resources each) written as ``fhir`` outbox items in the same SQLite transaction as the rest of
the batch, so an acknowledged MQTT message always has its delivery persisted.
"""
from __future__ import annotations

import json
from typing import Any

from iomt import vital_records
from iomt.config import IomtConfig
from iomt.dead_letters import DeadLetter
from kernel.fhir_bundle import transaction_bundle

FHIR_KIND = "fhir"  # outbox sender kind
_IOMT = IomtConfig()  # the ``iomt:`` section's defaults, the constructor's defaults


class ResourceSink:
    """Routes each batch's resources; see the module docstring.

    Parameters
    ----------
    store
        The vitals store (:class:`iomt.store.VitalsStore`); each batch commits through it.
    outbox
        :class:`serving.delivery.outbox.Outbox` (woken after each commit); may be None without a FHIR server.
    base_url
        ``fhir.base_url`` or None for the local store.
    bundle_max_entries
        Resources per Bundle (default ``iomt.bundle_max_entries``).
    """

    def __init__(self, store, outbox=None, base_url: str | None = None,
                 bundle_max_entries: int = _IOMT.bundle_max_entries) -> None:
        if base_url is not None and outbox is None:
            raise ValueError(f"outbox must be given with base_url {base_url!r}, None is given.")
        if bundle_max_entries < 1:
            raise ValueError(f"bundle_max_entries must be >= 1, {bundle_max_entries} is given.")
        self.store, self.outbox, self.base_url = store, outbox, base_url
        self.bundle_max_entries = bundle_max_entries

    def bundle_rows(self, resources: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
        rows = []
        for start in range(0, len(resources), self.bundle_max_entries):
            bundle = transaction_bundle(resources[start:start + self.bundle_max_entries], self.base_url)
            rows.append((f"fhir:bundle:{bundle['id']}", FHIR_KIND, self.base_url, json.dumps(bundle)))
        return rows

    def commit(self, resources: list[dict[str, Any]],
               dead_letters: list[DeadLetter] = (),
               outbox_rows: list[tuple[str, str, str, str]] = (), beds: list[tuple] = (),
               vitals: list[tuple] = (), durable: bool = True, contexts: list[tuple] = (),
               replayed: list[int] = (), fence: tuple[str, int] | None = None) -> None:
        """One transaction: resources and vitals rows (or their Bundles), dead letters (bounded:
        :mod:`iomt.dead_letters`), outbox items, the bed census rows, the patients' NEWS2
        context and the replayed dead letters of the batch (``durable``, ``fence``: see
        :meth:`iomt.store.VitalsStore.commit_batch`)."""
        outbox_rows = list(outbox_rows)
        local, local_vitals = resources, vitals
        if self.base_url is not None and (resources or vitals):
            outbox_rows += self.bundle_rows(vital_records.observations(vitals) + list(resources))
            local, local_vitals = [], []
        self.store.commit_batch(local, list(dead_letters), outbox_rows, list(beds),
                                list(local_vitals), durable, contexts=list(contexts),
                                replayed=list(replayed), fence=fence)
        if outbox_rows and self.outbox is not None:
            self.outbox.notify()

    def __call__(self, resources: list[dict[str, Any]]) -> None:
        """Write resources alone (the risk scorer's sink)."""
        self.commit(resources)
