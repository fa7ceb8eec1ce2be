"""The ``medgate`` command line."""
from __future__ import annotations

import argparse
import sys

from serving.config import ConfigError, load_config
from serving.logs import configure

#: Exit status for an invalid configuration (as argparse uses for usage errors).
EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medgate", description=__doc__)
    parser.add_argument("--config", help="YAML configuration file (default: $MEDGATE_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the server with every component")
    demo = sub.add_parser("demo", help="send a generated chest X-ray and a minute of vitals")
    demo.add_argument("--timeout-s", type=float, default=120.0)
    sub.add_parser("check-config", help="validate the configuration and print it")
    args = parser.parse_args(argv)
    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        print(f"medgate: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure(settings.log_level)
    if args.command == "check-config":
        print(settings.model_dump_json(indent=2))
        return 0
    if args.command == "serve":
        from serving.server import serve_forever

        serve_forever(settings)
        return 0
    from serving.demo import run_demo

    return run_demo(settings, timeout_s=args.timeout_s)


if __name__ == "__main__":
    sys.exit(main())
