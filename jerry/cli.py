"""`jerry-server`: run the stable-audio-open-small API (port 8005; `--demo` for tiny random weights)."""

from __future__ import annotations

from garycommon.httpapp import run_uvicorn, server_args
from garycommon.logs import setup_logging
from garycommon.settings import get_settings


def main(argv: list[str] | None = None) -> None:
    args = server_args("jerry-server", 8005, argv)
    settings = get_settings()
    setup_logging("jerry", settings.log_level)
    from .app import create_app

    app = create_app(settings, demo=True if args.demo else None)
    run_uvicorn(app, args.host, args.port, settings.log_level)


if __name__ == "__main__":
    main()
