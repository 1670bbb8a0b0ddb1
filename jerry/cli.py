"""`jerry-server`: run the stable-audio-open-small API (port 8005; `--demo` for tiny random weights)."""

from __future__ import annotations

from garycommon.httpapp import serve_main


def main(argv: list[str] | None = None) -> int:
    return serve_main("jerry-server", 8005, "jerry.app", "jerry", argv)


if __name__ == "__main__":
    raise SystemExit(main())
