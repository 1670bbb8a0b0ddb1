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


def assert_openapi_honest(spec: dict) -> None:
    """No documented 422 (validation errors answer 400 here) and the API-key scheme declared for "Try it out"."""
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert "422" not in op.get("responses", {}), (method, path)
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKeyHeader"] == {**schemes["ApiKeyHeader"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["BearerToken"]["scheme"] == "bearer"
    assert {"ApiKeyHeader": []} in spec["security"]
    assert "HTTPValidationError" not in spec["components"].get("schemas", {})
