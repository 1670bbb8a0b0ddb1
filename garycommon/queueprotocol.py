"""The GPU queue gateway's wire protocol in one place: every body its routes read, every answer and callback it writes.

The gateway (queue/gpuqueue) validates requests with these models and builds its answers and callbacks from them;
`garycommon.queueclient` builds its request bodies from them; gary reads the gateway's callbacks with
`TaskNotification`. docs/gateway.md describes the protocol around them (routes, task lifecycle, leases, callbacks).

Requests are strict (a string is not a number), bounded, and every identifier that ends up in a Redis key has a
pattern; unknown extra fields are ignored so older and newer peers keep working. Answers and callbacks carry an
optional field only when it applies (`wire()`), and request bodies leave out what the caller did not give
(`model_dump(exclude_none=True)`).

No torch here (nor anything heavy): the gateway's image imports this module without it.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
)

# --- lanes and routes ---------------------------------------------------------------------------------------------
GENERATION_LANE = "generation"  # the original's lane: its routes carry no prefix (`/tasks`, `/task/status`)
NOTIFICATION_PATH = "/task_notification"  # callbacks go to <callback_url or GARY_URL> + this
NOTIFICATION_ID_HEADER = "X-Notification-ID"  # the signature header is garycommon.keys.SIGNATURE_HEADER


def lane_prefix(lane: str) -> str:
    """Route prefix of a lane's task routes: none for `generation`, `/{lane}` for every other lane."""
    return "" if lane == GENERATION_LANE else f"/{lane}"


# --- field types --------------------------------------------------------------------------------------------------
MAX_VRAM_MB = 1_000_000
MAX_DATA_CHARS = 32_768

SessionId = Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,128}$")]
TaskType = Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
ClientKey = Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
ModelName = Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9_./:@+-]{1,200}$")]
Owner = Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9_.:@/-]{1,128}$")]
JOB_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
JobId = Annotated[StrictStr, StringConstraints(pattern=JOB_ID_PATTERN)]
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
FencingToken = Annotated[StrictInt, Field(ge=0)]
GpuList = Annotated[list[GpuId], Field(min_length=1, max_length=64)]


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


# --- requests (validated by the gateway) --------------------------------------------------------------------------
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
    gpus: GpuList | None = None
    job_id: JobId | None = Field(None, description="the caller's id for this one job (defaults to data.job_id); "
                                 "echoed in every callback, so the caller knows which of a session's jobs it is for")


class StatusRequest(_Body):
    """`POST /task/status` (and lane variants)."""

    session_id: SessionId
    status: Literal["processing", "completed", "failed", "cancelled"]
    error: ErrorText | None = None
    fencing_token: FencingToken | None = None
    peak_vram_mb: VramMb | None = None


class HeartbeatRequest(_Body):
    """`POST /tasks/{sid}/heartbeat` (and lane variants), `POST /leases/{id}/heartbeat`; the body is optional."""

    fencing_token: FencingToken | None = None


class LeaseRequest(_Body):
    """`POST /leases`: ask for VRAM for one model run (or, resident, for as long as the model stays loaded)."""

    model: ModelName
    lane: LaneName
    owner: Owner
    vram_mb: VramMb | None = None
    resident: StrictBool = False
    client_key: ClientKey | None = None
    session_id: SessionId | None = None
    gpus: GpuList | None = None
    callback_url: CallbackUrl | None = None


class ReleaseRequest(_Body):
    """`POST /leases/{id}/release`; the body is optional (a bare release is an unfenced `completed`)."""

    fencing_token: FencingToken | None = None
    outcome: Literal["completed", "failed", "cancelled"] = "completed"
    error: ErrorText | None = None
    peak_vram_mb: VramMb | None = None


class GpuRequest(_Body):
    """`POST /gpus`: a host announces (or resizes; 0 drains) one of its GPUs."""

    gpu_id: GpuId
    capacity_mb: Annotated[StrictInt, Field(ge=0, le=MAX_VRAM_MB)]
    host: Owner | None = None


# --- answers and callbacks (written by the gateway) ---------------------------------------------------------------
class _Answer(BaseModel):
    """A JSON object the gateway writes. A field defaulting to None is optional: absent unless it was given (given
    as None it is sent as null); every other field is always sent."""

    model_config = ConfigDict(extra="ignore")
    _optional: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._optional = frozenset(name for name, f in cls.model_fields.items() if f.default is None)

    def wire(self) -> dict[str, Any]:
        """The JSON object as sent."""
        out = self.model_dump()  # then drop: cheaper than model_dump(exclude=...)
        for name in self._optional - self.model_fields_set:
            del out[name]
        return out


class QueueStatus(_Answer):
    """`queue_status` of a task view and of every callback. The gateway always sends all four; a callback's reader
    treats a missing or non-numeric one as absent (gary then falls back to its own defaults)."""

    estimated_wait_seconds: float | None = None
    active_tasks: int | None = Field(None, description="granted tasks in the lane")
    queued_tasks: int | None = Field(None, description="a queued task: its position; otherwise the lane's queued count")
    position: int | None = Field(None, description="1 = next to be granted; 0 = not queued")


class TaskView(_Answer):
    """A task (or lease request) as the gateway answers it: enqueue, `GET /tasks/{sid}`, `POST /leases`,
    `GET /leases/{id}`. The task routes report a granted task as `processing` (the original's word: the slot is
    taken), the lease routes as `granted`; `state` is the stored state either way."""

    success: bool = True
    session_id: str
    lane: str
    status: str = Field(description="task routes: queued | processing | completed | failed | cancelled; lease "
                        "routes: the same with granted for processing")
    state: str = Field(description="stored state: queued | granted | processing | completed | failed | cancelled")
    type: str = ""
    model: str = ""
    vram_mb: int = 0
    position: int = 0
    queue_length: int = 0
    estimated_wait_seconds: float = 0.0
    active_tasks: int = 0
    queued_tasks: int = 0
    queue_status: QueueStatus
    lease_id: str = Field(description="`lane:session_id`")
    attempts: int = Field(0, description="how many times it was granted (an expired lease is re-queued once)")
    ttl_s: float
    # while granted or processing
    fencing_token: int | None = None
    expires_at: float | None = Field(None, description="unix seconds; heartbeats push it out by ttl_s")
    gpu: str | None = None
    # when set
    job_id: str | None = None
    error: str | None = None
    notify_error: str | None = Field(None, description="why the last callback could not be delivered")


class StatusAnswer(_Answer):
    """`POST /task/status` (and lane variants), `DELETE /tasks/{sid}`, `POST /leases/{id}/release`."""

    success: bool = True
    session_id: str
    lane: str
    status: str | None = Field(description="the task's state after the change")
    expires_at: float | None = Field(None, description="`processing`: the lease's new expiry (unix seconds)")


class HeartbeatAnswer(_Answer):
    """`POST /tasks/{sid}/heartbeat` (and lane variants), `POST /leases/{id}/heartbeat`."""

    success: bool = True
    session_id: str
    lane: str
    state: str
    ttl_s: float
    expires_at: float | None = Field(None, description="the new expiry of a granted lease (unix seconds)")


class GpuAnswer(_Answer):
    """`POST /gpus`, `DELETE /gpus/{id}`."""

    gpu_id: str
    capacity_mb: int
    result: str | None = None


def _number(value: Any) -> float | None:
    """A reader's view of a count or estimate: a finite JSON number, else absent."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def _seconds(value: Any) -> float | None:
    number = _number(value)
    return None if number is None else float(number)


def _queue(value: Any) -> QueueStatus | None:
    """A callback's queue_status, read liberally: each field given as a finite number is kept, any other as None."""
    if isinstance(value, QueueStatus):
        return value
    if not isinstance(value, dict):
        return None
    read: dict[str, Any] = {}
    if "estimated_wait_seconds" in value:
        read["estimated_wait_seconds"] = _seconds(value["estimated_wait_seconds"])
    for name in ("active_tasks", "queued_tasks", "position"):
        if name in value:
            number = _number(value[name])
            read[name] = None if number is None else int(number)
    return QueueStatus(**read)


def _text(value: Any) -> str | None:
    """What gary has always read from a callback's text fields: the value as text when it has one, else absent."""
    return str(value) if value else None


def _kind(value: Any) -> str:
    return str(value) if value else ""


def _status(value: Any) -> str:
    return str(value) if value else "unknown"


def _token(value: Any) -> int | str | None:
    return value if isinstance(value, int | str) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _lane(value: Any) -> str:
    return value if isinstance(value, str) else ""


class TaskNotification(_Answer):
    """The callback body: the gateway POSTs it to `<callback>/task_notification` with `X-Notification-ID` (the same
    as `notification_id`) and, with SERVICE_KEY set, `X-Gary-Signature`.

    The gateway sends `queued` (on enqueue, on each position change, and when an expired lease is re-queued),
    `ready` (granted: with the lease fields) and `failed` (with `error`). A reader is liberal: only a usable
    `session_id` is required; an ill-typed optional field reads as absent (text fields as their text)."""

    session_id: str
    status: Annotated[str, BeforeValidator(_status)] = "unknown"
    type: Annotated[str, BeforeValidator(_kind)] = Field("", description="the task_type given at enqueue")
    lane: Annotated[str, BeforeValidator(_lane)] = ""
    notification_id: Annotated[str | None, BeforeValidator(_str)] = None
    queue_status: Annotated[QueueStatus | None, BeforeValidator(_queue)] = None
    # ready
    lease_id: Annotated[str | None, BeforeValidator(_text)] = None
    fencing_token: Annotated[int | str | None, BeforeValidator(_token)] = None
    expires_at: Annotated[float | None, BeforeValidator(_seconds)] = None
    gpu: Annotated[str | None, BeforeValidator(_str)] = None
    # when set
    job_id: Annotated[str | None, BeforeValidator(_str)] = Field(None, description="the job_id given at enqueue")
    error: Annotated[str | None, BeforeValidator(_text)] = None
