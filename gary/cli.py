"""`gary-server`: run gary (Socket.IO + HTTP on one port, default 8000)."""

from __future__ import annotations

from garycommon.httpapp import run_uvicorn, server_args
from garycommon.logs import setup_logging
from garycommon.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    args = server_args("gary-server", 8000, argv)
    settings = get_settings()
    if args.demo:
        settings = settings.model_copy(update={"demo_models": True})
    setup_logging("gary", settings.log_level)
    from .app import create_app

    run_uvicorn(create_app(settings), args.host, args.port, settings.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
