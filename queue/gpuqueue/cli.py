"""`gpu-queue-server`: run the gateway with uvicorn (one process; run more replicas against the same Redis to scale)."""

from __future__ import annotations

from garycommon.httpapp import run_uvicorn, server_args
from garycommon.logs import setup_logging
from garycommon.settings import Settings

from .app import create_app


def main(argv: list[str] | None = None) -> int:
    args = server_args("gpu-queue-server", 8085, argv)  # --demo is accepted for symmetry: the gateway loads no model
    settings = Settings()
    setup_logging("gpu-queue", settings.log_level)
    run_uvicorn(create_app(settings, freeze_heap=True), args.host, args.port, settings.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
