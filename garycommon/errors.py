"""Error types with stable machine-readable codes, shared by every service and mapped to HTTP status and `error` events."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    BAD_REQUEST = "BAD_REQUEST"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    AUDIO_UNDECODABLE = "AUDIO_UNDECODABLE"
    AUDIO_EMPTY = "AUDIO_EMPTY"
    AUDIO_TOO_SHORT = "AUDIO_TOO_SHORT"
    AUDIO_TOO_LONG = "AUDIO_TOO_LONG"
    DATA_TOO_LARGE = "DATA_TOO_LARGE"
    NOT_FOUND = "NOT_FOUND"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    IN_PROGRESS = "IN_PROGRESS"
    QUEUE_FULL = "QUEUE_FULL"
    UNSATISFIABLE = "UNSATISFIABLE"
    QUEUE_UNAVAILABLE = "QUEUE_UNAVAILABLE"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    UNAUTHORIZED = "UNAUTHORIZED"
    MODEL_NOT_ALLOWED = "MODEL_NOT_ALLOWED"
    MODEL_GATED = "MODEL_GATED"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"
    UNSAFE_CHECKPOINT = "UNSAFE_CHECKPOINT"
    GPU_OOM = "GPU_OOM"
    TIMEOUT = "TIMEOUT"
    INTERNAL = "INTERNAL"


_HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.SESSION_NOT_FOUND: 404,
    ErrorCode.DATA_TOO_LARGE: 413,
    ErrorCode.IN_PROGRESS: 409,
    ErrorCode.QUEUE_FULL: 429,
    ErrorCode.UNSATISFIABLE: 422,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.MODEL_NOT_ALLOWED: 403,
    ErrorCode.QUEUE_UNAVAILABLE: 503,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
    ErrorCode.MODEL_GATED: 503,
    ErrorCode.MODEL_NOT_FOUND: 503,
    ErrorCode.MODEL_LOAD_FAILED: 503,
    ErrorCode.UNSAFE_CHECKPOINT: 403,
    ErrorCode.GPU_OOM: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.INTERNAL: 500,
}


class GaryError(Exception):
    """An error a client should see: a stable `code`, a human `message`, and the HTTP status it maps to."""

    def __init__(
        self, code: ErrorCode, message: str, *, http_status: int | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status if http_status is not None else _HTTP_STATUS.get(code, 400)
        self.details = details or {}


class AudioError(GaryError):
    """Undecodable, empty, too short/long or too large audio."""


class ModelLoadError(GaryError):
    """A model that cannot be resolved or loaded: the message says what to do (token, disk, allow-list)."""
