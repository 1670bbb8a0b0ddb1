"""`terry-server`: the MelodyFlow transform API on :8002."""

from __future__ import annotations

from garycommon.httpapp import serve_main


def main(argv: list[str] | None = None) -> int:
    return serve_main("terry-server", 8002, "terry.app", "terry", argv)


if __name__ == "__main__":
    raise SystemExit(main())
