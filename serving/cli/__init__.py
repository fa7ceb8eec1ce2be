"""The ``medgate`` command line (:mod:`serving.cli.main`) and its sub-commands."""
