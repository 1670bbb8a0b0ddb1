"""Client payloads: the safe parser for string (Swift) payloads and one pydantic model per request kind.

Socket events and HTTP routes validate through the same models, so both paths accept and reject the same input.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StringConstraints, ValidationError

from garycommon.errors import ErrorCode, GaryError

MiB = 1024 * 1024
MAX_AUDIO_TEXT = 64 * MiB  # base64 text of one upload: the original's restore cap, and what fits one Socket.IO message
MAX_CHUNKS = 4096
MAX_CHUNK_TEXT = 8 * MiB + 1024
RESTORE_CHUNK_SIZE = 8 * MiB  # advertised in ready_for_chunks (the original's value)
MAX_TEXT = 2000  # descriptions and custom prompts (T5 truncates long prompts anyway)
_MAX_NESTING = 3  # JSON that is itself a JSON string, e.g. double-encoded by a client


def _blank_to_none(value: object) -> object:
    """Clients send `session_id: null` or `""` for "no session yet"; both mean absent."""
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


SessionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
OptSessionId = Annotated[SessionId | None, BeforeValidator(_blank_to_none)]
ModelName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=200)]
AudioText = Annotated[str, StringConstraints(min_length=1)]
def _truncate_float(value: object) -> object:
    """The original (pydantic 1) truncated `7.5` to `7`; clients built against it may send fractional durations."""
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds")
    return int(value) if isinstance(value, float) and value == value and abs(value) != float("inf") else value


PromptDuration = Annotated[int, BeforeValidator(_truncate_float), Field(ge=1, le=29)]
Text = Annotated[str | None, Field(max_length=MAX_TEXT)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class GenerationParams(_Payload):
    """Sampling knobs; None means "use the default" (top_k 250, temperature 1.0, cfg 3.0, model's description)."""

    top_k: Annotated[int, Field(ge=1, le=2048)] | None = None
    temperature: Annotated[float, Field(gt=0, le=10)] | None = None
    cfg_coef: Annotated[float, Field(ge=0, le=30)] | None = None
    description: Text = None
    seed: Annotated[int, Field(ge=-1, le=2**32 - 1)] | None = None
    stream_partials: StrictBool = False  # opt in to `partial_audio` events / poll field while the job runs


class ProcessAudioRequest(GenerationParams):
    audio_data: AudioText
    model_name: ModelName
    prompt_duration: PromptDuration


class ContinueRequest(GenerationParams):
    session_id: OptSessionId = None
    audio_data: Annotated[AudioText | None, BeforeValidator(_blank_to_none)] = None
    model_name: ModelName | None = None
    prompt_duration: PromptDuration | None = None


class RetryRequest(GenerationParams):
    session_id: SessionId
    model_name: ModelName | None = None
    prompt_duration: PromptDuration | None = None


class TransformRequest(_Payload):
    variation: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
    audio_data: Annotated[AudioText | None, BeforeValidator(_blank_to_none)] = None
    session_id: OptSessionId = None
    flowstep: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] | None = None
    solver: Annotated[Literal["euler", "midpoint"] | None, BeforeValidator(_lower)] = None
    custom_prompt: Text = None
    seed: Annotated[int, Field(ge=-1, le=2**32 - 1)] | None = None


class SessionRequest(_Payload):
    """undo / cleanup / verify: just the session."""

    session_id: SessionId


class CropRequest(_Payload):
    audio_data: AudioText
    session_id: OptSessionId = None


class RestoreRequest(_Payload):
    audio_data: AudioText
    model_name: ModelName
    prompt_duration: PromptDuration


class ChunkRequest(_Payload):
    session_id: SessionId
    chunk: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CHUNK_TEXT)]
    chunk_index: Annotated[int, Field(ge=0, lt=MAX_CHUNKS)]
    total_chunks: Annotated[int, Field(ge=1, le=MAX_CHUNKS)]
    is_last: bool = False
    model_name: ModelName | None = None
    prompt_duration: PromptDuration | None = None


M = TypeVar("M", bound=BaseModel)


def parse_payload(data: Any) -> dict[str, Any]:
    """A dict is copied; a string is parsed as JSON (then, carefully, as Swift-escaped JSON). Raises GaryError."""
    if isinstance(data, dict):
        out = dict(data)
    elif isinstance(data, str | bytes | bytearray):
        out = _parse_text(data.decode("utf-8", "replace") if isinstance(data, bytes | bytearray) else data)
    else:
        raise GaryError(ErrorCode.BAD_REQUEST, "Invalid JSON format: payload must be a JSON object")
    for key in ("model_name", "session_id"):
        # Ids and repo names never contain backslashes; Swift clients leave stray ones around them.
        if isinstance(out.get(key), str):
            out[key] = out[key].replace("\\", "").strip()
    return out


def _parse_text(text: str) -> dict[str, Any]:
    value: Any = text.strip()
    for _ in range(_MAX_NESTING):
        if not isinstance(value, str):
            break
        value = _loads_json_or_escaped(value)
    if not isinstance(value, dict):
        raise GaryError(ErrorCode.BAD_REQUEST, "Invalid JSON format: payload must be a JSON object")
    return value


def _loads_json_or_escaped(text: str) -> Any:
    """Plain JSON first; else treat the text as the body of a JSON string literal (`{\\"a\\":1}`), i.e. undo exactly
    one level of escaping, which keeps escaped quotes inside values intact (unlike stripping every backslash)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as first:
        try:
            unescaped = json.loads(f'"{text}"')
        except json.JSONDecodeError:
            raise GaryError(ErrorCode.BAD_REQUEST, f"Invalid JSON format: {first}") from first
        try:
            return json.loads(unescaped)
        except json.JSONDecodeError as exc:
            raise GaryError(ErrorCode.BAD_REQUEST, f"Invalid JSON format: {exc}") from exc


def check_sizes(payload: dict[str, Any]) -> None:
    """Oversize audio is a DATA_TOO_LARGE error (the original's restore code), never a dropped connection."""
    audio = payload.get("audio_data")
    if isinstance(audio, str) and len(audio) > MAX_AUDIO_TEXT:
        raise GaryError(
            ErrorCode.DATA_TOO_LARGE,
            f"Audio data is too large ({len(audio) // MiB} MiB of base64; the limit is {MAX_AUDIO_TEXT // MiB} MiB)",
            http_status=413,
        )


def validate(model: type[M], data: Any) -> M:
    """Parse + size check + pydantic validation; every failure is a GaryError with a readable message."""
    payload = parse_payload(data)
    check_sizes(payload)
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise GaryError(ErrorCode.VALIDATION_ERROR, describe(exc), http_status=400) from None


def describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err.get("loc", ())) or "payload"
        parts.append("Missing required field: " + loc if err.get("type") == "missing" else f"{loc}: {err.get('msg')}")
    return "; ".join(parts)
