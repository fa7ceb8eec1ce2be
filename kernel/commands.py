"""Commands that other packages add to the ``medgate`` command line, found by entry point.

The ``medgate`` command (:mod:`serving.cli.main`) does not import the packages that sit beside or above
``serving`` (``training``, the demo): each declares a :class:`CommandGroup` under the entry point
group :data:`ENTRY_POINT_GROUP` in ``pyproject.toml``::

    [project.entry-points."medgate.commands"]
    training = "training.cli:COMMAND_GROUP"

and the command line loads every group it finds there (:func:`command_groups`).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

#: The entry point group (Python packaging, "Entry points specification") of command groups.
ENTRY_POINT_GROUP = "medgate.commands"


@dataclass(frozen=True)
class CommandGroup:
    """Sub-commands of ``medgate`` declared and run by one package.

    ``add`` declares ``names`` on the ``medgate`` sub-parsers; ``run`` executes a parsed command
    of the group and returns the exit status.  A group reads the configuration itself if it needs
    one (``args.config``).
    """

    names: tuple[str, ...]
    add: Callable[[argparse._SubParsersAction], None]
    run: Callable[[argparse.Namespace], int]


def command_groups(group: str = ENTRY_POINT_GROUP) -> list[CommandGroup]:
    """The command groups installed under ``group``, in entry point name order."""
    found = []
    for entry in sorted(entry_points(group=group), key=lambda e: e.name):
        value = entry.load()
        if not isinstance(value, CommandGroup):
            raise TypeError(f"entry point {entry.name} = {entry.value} of {group} must be a CommandGroup, "
                            f"{type(value).__name__} is given.")
        found.append(value)
    return found
