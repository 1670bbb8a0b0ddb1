"""Uvicorn's httptools protocol, but each response leaves in one socket write instead of two.

Uvicorn writes the status line and headers as soon as the app starts its response, then the body: two syscalls and
two TCP segments per answer, and on loopback each write also runs the receiver's network stack. The gateway's
answers are one small JSON body each, so holding the headers until the body (or the close) halves the writes and
the client's wake-ups without changing a byte on the wire.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class _HeldHeaders:
    """The cycle's transport: the first write after the response started (the headers) waits for the next write."""

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        self._cycle = cycle
        self._held: bytes | None = None
        self._headers_seen = False

    def write(self, data: bytes) -> None:
        if not self._headers_seen and self._cycle.response_started and not self._cycle.response_complete:
            self._headers_seen = True
            self._held = data
            return
        if self._held is not None:
            data, self._held = self._held + data, None
        self._transport.write(data)

    def close(self) -> None:
        if self._held is not None:
            self._transport.write(self._held)
            self._held = None
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        # every response but HEAD's writes a body after its headers (an empty one too), which flushes them
        if cycle is not None and cycle is not before and self.scope["method"] != "HEAD":
            cycle.transport = _HeldHeaders(self.transport, cycle)  # type: ignore[assignment]
