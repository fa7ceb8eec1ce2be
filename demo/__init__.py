"""``medgate demo``: exercise a running server end to end with generated data (no patient).

A client of the server, not a part of it: it sends what ``training.synthetic`` generates and reads
what ``serving`` stored, so it sits above both (docs/architecture.md, "Layers") and neither imports
it.  The ``medgate`` command finds it through the ``medgate.commands`` entry point
(:data:`demo.cli.COMMAND_GROUP`).
"""
