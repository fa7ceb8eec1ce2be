"""The ``medgate`` command line.

Commands of other packages (``medgate train``, ``medgate demo``) are found through the
``medgate.commands`` entry point (:mod:`kernel.commands`), not imported from here.
"""
from __future__ import annotations

import argparse
import os
import sys

from kernel.cluster import NodeIdConflict
from kernel.commands import command_groups
from kernel.logs import configure
from serving.cli import governance, models, outbox, status
from serving.config import ConfigError, Settings, load_config

#: Exit status for an invalid configuration (as argparse uses for usage errors).
EXIT_CONFIG = 2
#: Exit status of ``medgate serve`` refused because another live process holds its ``node.id``.
EXIT_NODE_ID_CONFLICT = 3
#: Ray's authentication mode for the cluster ``medgate serve`` starts and every driver that joins it.
RAY_AUTH_MODE = "token"


def fix_ray_auth_mode() -> None:
    """Set ``RAY_AUTH_MODE`` unless the environment sets it, before anything imports Ray.

    Ray reads its authentication mode once, when it is first imported. A second driver
    (``medgate models deploy``) must use the same mode as the server that started the cluster, so
    the mode is fixed by the command that starts either, rather than left to Ray's guess from
    whether ``~/.ray/auth_token`` happens to exist. Only this process entry sets it: importing a
    package changes no environment.
    """
    os.environ.setdefault("RAY_AUTH_MODE", RAY_AUTH_MODE)


def main(argv: list[str] | None = None) -> int:
    fix_ray_auth_mode()
    parser = argparse.ArgumentParser(prog="medgate", description=__doc__)
    parser.add_argument("--config", help="YAML configuration file (default: $MEDGATE_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server: every component, or those of --role")
    serve.add_argument("--role", help="all (default), or a comma list of gateway, bridge, ingress, models; "
                                      "overrides node.role (docs/deployment.md)")
    sub.add_parser("check-config", help="validate the configuration and print it")
    models.add_commands(sub)
    outbox.add_commands(sub)
    governance.add_commands(sub)
    status.add_commands(sub)
    groups = command_groups()
    for group in groups:
        group.add(sub)
    args = parser.parse_args(argv)
    for group in groups:
        if args.command in group.names:
            return group.run(args)
    settings = load_settings(args)
    if isinstance(settings, int):
        return settings
    if args.command == "check-config":
        print(settings.public_json())
        return 0
    if args.command == "serve":
        from serving.server import serve_forever

        try:
            serve_forever(settings)
        except NodeIdConflict as exc:
            print(f"medgate: refusing to start: {exc} (node.id, MEDGATE_NODE__ID)", file=sys.stderr)
            return EXIT_NODE_ID_CONFLICT
        return 0
    if args.command == "outbox":
        return outbox.run(settings, args)
    if args.command in governance.COMMANDS:
        return governance.run(settings, args)
    if args.command in status.COMMANDS:
        return status.run(settings, args)
    return models.run(settings, args)


def load_settings(args: argparse.Namespace) -> Settings | int:
    """The configuration of ``args.config`` (default ``$MEDGATE_CONFIG``) with logging configured
    from it, or :data:`EXIT_CONFIG` after printing why it is invalid."""
    role = getattr(args, "role", None)  # `medgate serve --role`: above the file and the environment
    try:
        settings = load_config(args.config, **({"node": {"role": role}} if role else {}))
    except ConfigError as exc:
        print(f"medgate: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure(settings.log_level, settings.logging.format)
    return settings

