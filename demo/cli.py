"""The ``medgate demo`` command (entry point ``medgate.commands``, :mod:`kernel.commands`)."""
from __future__ import annotations

import argparse

from kernel.commands import CommandGroup
from serving.cli.main import load_settings

COMMANDS = ("demo",)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Declare ``demo`` on the ``medgate`` sub-parsers."""
    demo = sub.add_parser("demo", help="send a generated chest X-ray and a minute of vitals")
    demo.add_argument("--timeout-s", type=float, default=120.0)


def run(args: argparse.Namespace) -> int:
    """Run the demo against the server of ``--config``; 0 when every result arrived."""
    settings = load_settings(args)
    if isinstance(settings, int):
        return settings
    from demo.client import run_demo

    return run_demo(settings, timeout_s=args.timeout_s)


#: The ``medgate`` sub-commands of this package.
COMMAND_GROUP = CommandGroup(COMMANDS, add_commands, run)
