"""What every layer shares: imported by ``models``, ``dicom_gateway``, ``iomt``, ``serving`` and
``training`` alike, so it imports none of them, nor Ray, FastAPI, pydicom or paho (the layer
contract, ``tests/test_layers.py``; ``docs/architecture.md``).

- :mod:`kernel.correlation`: the correlation id of the work in hand.
- :mod:`kernel.logs`: the text and JSON log formats.
- :mod:`kernel.periodic`: a background thread that runs one pass every interval.
- :mod:`kernel.wal_checkpoint`: WAL checkpoints of the SQLite database on their own thread.
- :mod:`kernel.heap`: the garbage collector settled once a long-lived process has started.
- :mod:`kernel.delivery_errors`: why a delivery failed, permanently or transiently.
- :mod:`kernel.fhir_bundle`: FHIR transaction Bundles with deterministic ids.
- :mod:`kernel.config`: the base class of every layer's configuration section.
- :mod:`kernel.text`: characters refused in names and identifiers sent from outside.
- :mod:`kernel.database`: the one SQLite database the owner stores share (connection, writer lock,
  transactions, tables created by their owner, typed records); ``docs/architecture.md`` "Stores".
- :mod:`kernel.state_permissions`: the state folder and database kept private (0700/0600).
- :mod:`kernel.commands`: the ``medgate`` CLI's command registry (entry points).
"""
