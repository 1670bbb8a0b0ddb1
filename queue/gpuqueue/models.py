"""Request bodies of the gateway's routes. Strict types (a string is not a number), bounded sizes, patterns for every
identifier that ends up inside a Redis key; unknown extra fields are ignored so older/newer clients keep working."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, StringConstraints

MAX_VRAM_MB = 1_000_000
MAX_DATA_CHARS = 32_768

SessionId = Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,128}$")]
TaskType = Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
ClientKey = Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
ModelName = Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9_./:@+-]{1,200}$")]
Owner = Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9_.:@/-]{1,128}$")]
JobId = Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
# A GPU id may name its host ("box/0") but is never path-like: no leading '/', no '..' or '//' (ids end up in
# URLs, metric labels and log lines).
GPU_ID_PATTERN = r"^[A-Za-z0-9_.:@-][A-Za-z0-9_.:/@-]{0,63}$"


def check_gpu_id(value: str) -> str:
    if ".." in value or "//" in value:
        raise ValueError("must not contain '..' or '//'")
    return value


GpuId = Annotated[StrictStr, StringConstraints(pattern=GPU_ID_PATTERN), AfterValidator(check_gpu_id)]
LaneName = Annotated[StrictStr, StringConstraints(pattern=r"^[a-z0-9_-]{1,32}$")]
VramMb = Annotated[StrictInt, Field(gt=0, le=MAX_VRAM_MB)]
ErrorText = Annotated[StrictStr, StringConstraints(max_length=2000)]


def _check_callback(url: str) -> str:
    if url == "":
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("callback_url must be an http(s) URL with a host, or empty for none")
    return url.rstrip("/")


CallbackUrl = Annotated[StrictStr, StringConstraints(max_length=2000), AfterValidator(_check_callback)]


def _check_data(value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    size = len(value) if isinstance(value, str) else len(json.dumps(value)) if value is not None else 0
    if size > MAX_DATA_CHARS:
        raise ValueError(f"data is {size} characters; at most {MAX_DATA_CHARS} (it carries parameters, never audio)")
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class EnqueueRequest(_Body):
    """`POST /tasks`, `/transform/tasks`, `/{lane}/tasks`: the original's shape plus optional sizing/fairness fields."""

    session_id: SessionId
    task_type: TaskType = "task"
    data: Annotated[StrictStr | dict[str, Any] | None, AfterValidator(_check_data)] = None
    callback_url: CallbackUrl | None = Field(None, description="base URL; the gateway POSTs <url>/task_notification")
    model: ModelName | None = None
    vram_mb: VramMb | None = None
    client_key: ClientKey | None = Field(None, description="fairness identity within the caller (e.g. one user)")
    gpus: Annotated[list[GpuId], Field(min_length=1, max_length=64)] | None = None
    job_id: JobId | None = Field(None, description="the caller's id for this one job (defaults to data.job_id); "
                                 "echoed in every callback, so the caller knows which of a session's jobs it is for")


class StatusRequest(_Body):
    """`POST /task/status` (and lane variants)."""

    session_id: SessionId
    status: Literal["processing", "completed", "failed", "cancelled"]
    error: ErrorText | None = None
    fencing_token: Annotated[StrictInt, Field(ge=0)] | None = None
    peak_vram_mb: VramMb | None = None


class HeartbeatRequest(_Body):
    fencing_token: Annotated[StrictInt, Field(ge=0)] | None = None


class LeaseRequest(_Body):
    """`POST /leases`: ask for VRAM for one model run (or, resident, for as long as the model stays loaded)."""

    model: ModelName
    lane: LaneName
    owner: Owner
    vram_mb: VramMb | None = None
    resident: StrictBool = False
    client_key: ClientKey | None = None
    session_id: SessionId | None = None
    gpus: Annotated[list[GpuId], Field(min_length=1, max_length=64)] | None = None
    callback_url: CallbackUrl | None = None


class ReleaseRequest(_Body):
    fencing_token: Annotated[StrictInt, Field(ge=0)] | None = None
    outcome: Literal["completed", "failed", "cancelled"] = "completed"
    error: ErrorText | None = None
    peak_vram_mb: VramMb | None = None


class GpuRequest(_Body):
    """`POST /gpus`: a host announces (or resizes; 0 drains) one of its GPUs."""

    gpu_id: GpuId
    capacity_mb: Annotated[StrictInt, Field(ge=0, le=MAX_VRAM_MB)]
    host: Owner | None = None
