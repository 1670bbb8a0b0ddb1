"""`gary-server`: run gary (Socket.IO + HTTP on one port, default 8000)."""

from __future__ import annotations

from garycommon.httpapp import serve_main


def main(argv: list[str] | None = None) -> int:
    return serve_main("gary-server", 8000, "gary.app", "gary", argv)


if __name__ == "__main__":
    raise SystemExit(main())
