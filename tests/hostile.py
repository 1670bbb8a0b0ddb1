"""Hostile inputs the services once failed on (issue 14), shared by every test folder."""

from __future__ import annotations

import struct

# 20,000 levels: Python's json parser answers RecursionError long before that
DEEP_JSON = b"[" * 20000 + b"]" * 20000


def hostile_wav(rate: int = 2147483647, frames: int = 2000) -> bytes:
    """The 44-byte header that OOM-killed jerry: 1 channel, 16 bit, a rate of 2^31 - 1, then `frames` frames."""
    data = b"\x01\x00" * frames
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 1, 1, rate,
                         (rate * 2) & 0xFFFFFFFF, 2, 16, b"data", len(data))
    return header + data


def deep_object(key: str, **fields: object) -> bytes:
    """A JSON object with ordinary `fields` whose `key` holds DEEP_JSON."""
    import json

    head = json.dumps(fields)[:-1]
    return (head + (", " if fields else "") + json.dumps(key) + ": ").encode() + DEEP_JSON + b"}"
