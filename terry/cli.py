"""`terry-server`: the MelodyFlow transform API on :8002."""

from __future__ import annotations

from garycommon.httpapp import run_uvicorn, server_args
from garycommon.logs import setup_logging
from garycommon.settings import get_settings


def main(argv: list[str] | None = None) -> None:
    args = server_args("terry-server", 8002, argv)
    settings = get_settings()
    if args.demo:
        settings = settings.model_copy(update={"demo_models": True})
    setup_logging("terry", settings.log_level)
    from .app import create_app

    run_uvicorn(create_app(settings), args.host, args.port, settings.log_level)


if __name__ == "__main__":
    main()
