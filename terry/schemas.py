"""Request/response shapes of terry's HTTP API (validation only; no I/O).

`POST /transform` keeps the original's field names and success body (`audio`, `message`); what we add is optional
(`seed`, `steps`, `output_sample_rate`, the queue lease gary may pass, and a `metadata` object in the reply).
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from garycommon.errors import ErrorCode, GaryError

from .presets import MAX_PROMPT_CHARS

SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
MAX_SEED = 2**32 - 1

Solver = Literal["euler", "midpoint"]


class TransformRequest(BaseModel):
    """Body of `POST /transform`. Unknown keys are ignored so newer clients keep working."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, allow_inf_nan=False)

    session_id: str | None = Field(
        None, description="Room/keys progress goes to; gary always sends it. Omitted (curl) -> a fresh id, returned."
    )
    variation: str = Field(..., min_length=1, max_length=100, description="Preset name (GET /variations) or any name "
                           "with custom_prompt")
    audio_file_path: str | None = Field(None, max_length=4096, description="File inside TRANSFER_DIR; wins over audio")
    audio: str | None = Field(
        None, validation_alias=AliasChoices("audio", "audio_data"),
        description="Base64 of a whole audio file (any format/rate/channels); `audio_data` (gary's name) also works",
    )
    flowstep: float | None = Field(
        None, gt=0, lt=1, allow_inf_nan=False,
        description="How far the input is inverted toward noise, in (0, 1): lower = more change (default 0.12)",
    )
    solver: Solver | None = Field(None, description="euler (25 steps, regularised inversion) | midpoint (64 steps)")
    custom_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="Replaces the preset's prompt")
    seed: int | None = Field(None, description="Reproducible result; None or -1 = server picks (echoed back)")
    steps: int | None = Field(
        None, ge=2, le=128, description="Override the solver's step count (midpoint needs an even number); for previews"
    )
    output_sample_rate: int | None = Field(
        None, ge=8000, le=192000, description="Rate of the returned WAV; default = the input's rate (32000 = original)"
    )
    lease_id: str | None = Field(None, max_length=200, description="Queue lease gary already holds for this task")
    fencing_token: int | str | None = Field(None, description="Fencing token of that lease")

    @field_validator("session_id")
    @classmethod
    def _session_id(cls, value: str | None) -> str | None:
        if value is not None and not SESSION_ID.match(value):
            raise ValueError("must be 1-128 characters of letters, digits, '_' or '-'")
        return value

    @field_validator("solver", mode="before")
    @classmethod
    def _solver(cls, value: Any) -> Any:
        # gary lower-cases the solver; accept the same spellings here so direct callers behave the same.
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        if value is None or value == -1:
            return None
        if not 0 <= value <= MAX_SEED:
            raise ValueError(f"must be -1 (random) or between 0 and {MAX_SEED}")
        return value

    @field_validator("audio_file_path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("contains a NUL byte")
        return value or None

    @model_validator(mode="after")
    def _one_source(self) -> TransformRequest:
        if not self.audio_file_path and not self.audio:
            raise ValueError("No audio data or file path provided (send audio_file_path or base64 audio)")
        if self.steps is not None and (self.solver or "euler") == "midpoint" and self.steps % 2:
            raise ValueError("steps must be even for the midpoint solver")
        return self

    def resolved_session_id(self) -> str:
        return self.session_id or uuid.uuid4().hex


def parse_transform(body: Any) -> TransformRequest:
    """Validate a decoded JSON body; every problem becomes one readable 400 message naming the fields."""
    if not isinstance(body, dict):
        raise GaryError(ErrorCode.BAD_REQUEST, "request body must be a JSON object")
    try:
        return TransformRequest.model_validate(body)
    except ValidationError as exc:
        raise GaryError(ErrorCode.VALIDATION_ERROR, describe(exc), http_status=400) from exc


def describe(exc: ValidationError) -> str:
    parts: list[str] = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "missing":
            msg = "Missing required data"
        parts.append(f"{field}: {msg}" if field else msg)
    return "; ".join(parts)


class VariationInfo(BaseModel):
    prompt: str
    flowstep: float
    steps: int


class VariationsResponse(BaseModel):
    """The shape the original intended (its route always 500'd on a wrong key)."""

    variations: dict[str, VariationInfo]
    custom: str = Field(description="How to use your own prompt")
    solvers: dict[str, int] = Field(description="Default steps per solver")
    flowstep: str = Field(description="What flowstep means (the original README had the direction backwards)")
