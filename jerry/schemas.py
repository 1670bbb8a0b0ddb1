"""Request and response shapes. Form fields arrive as strings and are parsed by the same models as JSON, so a number
that fails to parse is a 400 with the field's name on every route (the original answered 500)."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from garycommon.errors import ErrorCode, GaryError

M = TypeVar("M", bound=BaseModel)
SEED_MAX = 2**32 - 1
PROMPT_MAX_CHARS = 2000

ReturnFormat = Literal["file", "base64"]
ModelType = Literal["standard", "finetune"]
SamplerType = Literal["pingpong", "euler"]


class _Base(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, allow_inf_nan=False)

    prompt: str | None = Field(None, max_length=PROMPT_MAX_CHARS, description="Text prompt (required)")
    negative_prompt: str | None = Field(
        None, max_length=PROMPT_MAX_CHARS, description="Steers away from this text; only has an effect when cfg_scale != 1"
    )
    seed: int = Field(-1, ge=-1, le=SEED_MAX, description="-1 picks a random seed; the used seed is returned")
    return_format: ReturnFormat = Field("file", description="`file` (WAV attachment) or `base64` (JSON)")
    normalize: bool | None = Field(None, description="Peak-normalise to 0 dBFS (default: JERRY_PEAK_NORMALIZE)")

    @field_validator("negative_prompt")
    @classmethod
    def _blank_negative(cls, value: str | None) -> str | None:
        return value or None

    def require_prompt(self) -> str:
        if not self.prompt:
            raise GaryError(ErrorCode.VALIDATION_ERROR, "prompt is required")
        return self.prompt


class _ModelChoice(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    model_type: ModelType = Field("standard", description="`standard` SAO-small or a `finetune` from an allowed repo")
    finetune_repo: str | None = Field(None, description="Hub repo of the fine-tune (owner/name, must be allowed)")
    finetune_checkpoint: str | None = Field(None, description="Checkpoint file in that repo")


class GenerateRequest(_Base, _ModelChoice):
    """POST /generate (JSON)."""

    steps: int | None = Field(None, ge=1, le=250, description="Sampler steps (default 8; 50 for rectified_flow models)")
    cfg_scale: float = Field(1.0, ge=0, le=20, description="Classifier-free guidance; 1.0 skips the unconditional pass")
    seconds_total: float | None = Field(None, description="Seconds of audio to return (1 to the model window; default 11)")
    seconds_start: float | None = Field(None, description="Accepted for SAO-1.0 clients; SAO-small ignores it")
    sampler_type: SamplerType | None = Field(None, description="`pingpong` (default for rf_denoiser) or `euler`")


class LoopRequest(_Base, _ModelChoice):
    """POST /generate/loop (JSON or multipart)."""

    loop_type: str = Field("auto", max_length=32, description="`drums`, `instruments` or `auto` (prompt unchanged)")
    bars: int | str | None = Field(None, description="1, 2, 4, 8 or `auto` (largest that fits)")
    style_strength: float = Field(0.8, gt=0, le=1.0, description="With audio_file: how much of the input is replaced")
    steps: int = Field(8, ge=1, le=250)
    cfg_scale: float = Field(6.0, ge=0, le=20)
    sampler_type: SamplerType | None = None


class StyleTransferRequest(_Base):
    """POST /generate/style-transfer (multipart with audio_file)."""

    style_strength: float = Field(0.8, ge=0.1, le=1.0, description="0.1 keeps most of the input, 1.0 replaces it")
    steps: int = Field(8, ge=1, le=100)
    cfg_scale: float = Field(6.0, ge=0, le=20)


class LoopGuidedRequest(_Base, _ModelChoice):
    """POST /generate/loop-guided (multipart with audio_file)."""

    loop_type: str = Field("auto", max_length=32)
    bars: int | str | None = None
    steps: int = Field(50, ge=1, le=250)
    cfg_scale: float = Field(6.0, ge=0, le=20)
    guidance_mask: Literal["fade", "full", "first_bar"] = Field("fade", description="Which part of the riff guides")
    guidance_strength: float = Field(1.0, ge=0, le=10, description="Pull towards the riff (0 = unguided)")
    guidance_start_weight: float | None = Field(None, ge=0, le=1, description="Mask level at the start (default 1)")
    guidance_end_weight: float | None = Field(None, ge=0, le=1, description="Mask level at the end (default = start)")
    sampler_type: SamplerType | None = None


class RiffRequest(_Base):
    """POST /generate/loop-with-riff (multipart or JSON)."""

    key: str | None = Field(None, max_length=16, description="Riff key, e.g. `gsharp`, `f`, `csharp`")
    loop_type: str = Field("instruments", max_length=32)
    bars: int | str | None = None
    style_strength: float = Field(0.8, gt=0, le=1.0)
    steps: int = Field(8, ge=1, le=250)
    cfg_scale: float = Field(1.0, ge=0, le=20)


class CheckpointsRequest(BaseModel):
    finetune_repo: str | None = None


class SwitchRequest(_ModelChoice):
    pass


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def parse_fields(model: type[M], fields: dict[str, Any]) -> M:
    """Validate JSON or form fields; blank form values count as absent. Errors become a 400 naming the field."""
    cleaned = {k: v for k, v in fields.items() if not (isinstance(v, str) and v.strip() == "")}
    try:
        return model.model_validate(cleaned)
    except ValidationError as exc:
        raise GaryError(ErrorCode.VALIDATION_ERROR, validation_message(exc)) from None
