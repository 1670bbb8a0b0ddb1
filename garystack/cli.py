"""The `gary-stack` command: `up` runs the whole stack on one machine, `pull` fetches its models ahead of time."""

from __future__ import annotations

import argparse
from pathlib import Path

from garycommon.clihelp import HelpFormatter, env_epilog, settings_or_exit
from garycommon.logs import setup_logging

from . import launcher
from .pull import add_parser as add_pull_parser
from .pull import pull


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gary-stack", description=launcher.__doc__.splitlines()[0], epilog=env_epilog(None),
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run redis, the queue gateway, terry, jerry and gary", epilog=env_epilog(None),
                        formatter_class=HelpFormatter)
    up.add_argument("--demo", action="store_true", help="tiny random-weight models for every model name")
    up.add_argument("--host", default="127.0.0.1", help="address the services listen on (0.0.0.0 to share)")
    up.add_argument("--data-dir", type=Path, default=None, help="sessions, demo models, redis AOF (default DATA_DIR)")
    up.add_argument("--gary-port", type=int, default=8000)
    up.add_argument("--jerry-port", type=int, default=8005)
    up.add_argument("--terry-port", type=int, default=8002)
    up.add_argument("--queue-port", type=int, default=8085)
    up.add_argument("--redis-port", type=int, default=6379, help="used when REDIS_URL is not set")
    up.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for each service")
    add_pull_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_or_exit("gary-stack")
    setup_logging("gary-stack", settings.log_level)
    if args.command == "pull":
        return pull(args, settings)
    return launcher.up(args, settings)
