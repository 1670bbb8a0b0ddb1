"""`gpu-queue-server`: run the gateway with uvicorn (one process; run more replicas against the same Redis to scale)."""

from __future__ import annotations

import uvicorn

from garycommon.clihelp import settings_or_exit
from garycommon.httpapp import server_args
from garycommon.logs import setup_logging

from .app import create_app
from .oneshot import OneWriteHttpToolsProtocol


def main(argv: list[str] | None = None) -> int:
    args = server_args("gpu-queue-server", 8085, argv, service="queue", demo=False)  # the gateway loads no model
    settings = settings_or_exit("gpu-queue-server")
    setup_logging("gpu-queue", settings.log_level)
    # not garycommon's run_uvicorn: the gateway serves no websockets, and answers in one write each (oneshot.py)
    uvicorn.run(create_app(settings, freeze_heap=True), host=args.host, port=args.port,
                log_level=settings.log_level.lower(), http=OneWriteHttpToolsProtocol,
                log_config=None)  # uvicorn's lines through setup_logging's handler: time, service, level
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
