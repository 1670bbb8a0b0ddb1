"""What every command line shares: `--help` that lists the options and the environment variables the program reads
(with their defaults), and settings errors told in one line per variable instead of a pydantic traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pydantic import ValidationError

from .settings import Settings

# Variables named for one service; every other variable is read by all of them.
_SERVICE_PREFIXES = ("gary_", "jerry_", "terry_", "queue_")


def env_defaults(service: str | None) -> list[tuple[str, str]]:
    """(VARIABLE, default) for every setting `service` reads (None: all of them); secrets show as unset."""
    own = f"{service}_" if service else None
    rows = []
    for name, field in Settings.model_fields.items():
        if own and name.startswith(_SERVICE_PREFIXES) and not name.startswith(own):
            continue
        default: Any = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
        if isinstance(default, list):
            default = ",".join(default)
        rows.append((name.upper(), "" if default is None else str(default)))
    return rows


def env_epilog(service: str | None) -> str:
    rows = env_defaults(service)
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name.ljust(width)}  {default if default != '' else '(empty)'}" for name, default in rows]
    return "environment variables (default):\n" + "\n".join(lines) + "\n\nREADME.md's configuration table says what each means."


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Option defaults in the option list, and the environment epilog kept as laid out."""


def parser(prog: str, description: str, service: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, epilog=env_epilog(service),
                                   formatter_class=HelpFormatter)


def settings_or_exit(prog: str, **overrides: Any) -> Settings:
    """Settings from the environment; a bad value exits (status 2) with one line per variable naming what is allowed."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            name = str(err["loc"][0]).upper() if err.get("loc") else "a setting"
            allowed = err.get("ctx", {}).get("expected")
            given = err.get("input")
            what = f"must be one of {allowed}" if allowed else str(err.get("msg", "is invalid")).lower()
            print(f"{prog}: {name}={given!r} is not valid: {what}", file=sys.stderr)
        raise SystemExit(2) from None
