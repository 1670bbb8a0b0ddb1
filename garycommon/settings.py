"""One place for configuration: every service reads the same environment variables (see README's table)."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    """Environment-driven settings shared by gary, jerry, terry and the queue gateway."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for queue, flags, progress and Socket.IO fan-out")
    redis_max_connections: int = Field(
        512, ge=2, description="Redis connections per pool; past this a request waits for one (REDIS_POOL_TIMEOUT_SECONDS)"
    )
    redis_pool_timeout_seconds: float = Field(
        10.0, gt=0, description="How long a request waits for a free Redis connection before a 429 'server busy, retry'"
    )
    mongodb_url: str = Field("mongodb://127.0.0.1:27017/", description="MongoDB for sessions when SESSION_STORE=mongo")
    mongodb_db: str = Field("audio_generation_db", description="Mongo database name (the original's)")
    session_store: Literal["mongo", "sqlite"] = Field("sqlite", description="Session backend: mongo+GridFS or embedded")
    session_ttl_seconds: int = Field(
        7 * 24 * 3600, gt=0, description="Sessions and their audio expire this long after creation (Mongo TTL / sweep)"
    )
    data_dir: Path = Field(Path("./data"), description="Embedded session store, demo models, riffs and other local files")
    transfer_dir: Path = Field(Path("/tmp/audio_transfer"), description="Only folder terry reads audio_file_path from")

    queue_url: str = Field("", description="GPU queue gateway base URL; empty = solo (no gateway, no leases, one job "
                           "on the GPU at a time; `gary-stack up` and compose set it)")
    gary_url: str = Field("http://127.0.0.1:8000", description="gary base URL (queue callbacks go to /task_notification)")
    terry_url: str = Field("http://127.0.0.1:8002", description="terry (MelodyFlow) base URL")
    jerry_url: str = Field("http://127.0.0.1:8005", description="jerry (stable-audio-open-small) base URL")
    socketio_channel: str = Field("flask-socketio", description="Redis pub/sub channel for cross-process Socket.IO emits")

    hf_token: SecretStr | None = Field(None, description="Hugging Face token (needed for gated stable-audio-open-small)")
    hf_home: Path | None = Field(None, description="Hugging Face cache root (kept on a volume, never /tmp)")
    local_models_dir: Path | None = Field(
        None, description="Folder of <owner>/<name>/ model folders used instead of the hub when present"
    )
    demo_models: bool = Field(False, description="Serve every model name with tiny random weights (no downloads)")
    model_allow_owners: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["thepatch", "facebook"],
        description="Hub owners whose repos clients may name, besides the /api/models list",
    )

    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    cpu_dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Model compute dtype on a CPU: auto = bf16 where the CPU runs bf16 natively (AVX512-BF16 "
        "/ AMX), else fp32; bf16 or fp32 force it (GPUs keep their own: fp16/bf16)"
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated API keys; empty = open (solo use)"
    )
    service_key: SecretStr | None = Field(
        None, description="Shared secret gary, jerry, terry and the gateway use between themselves (never a user key; "
        "`gary-stack up` makes one per run; compose: set it); signs gateway callbacks; needed when API_KEYS is set"
    )
    admin_key: SecretStr | None = Field(
        None, description="Operator key for the gateway's admin routes (POST/DELETE /gpus); unset = loopback callers only"
    )
    log_level: LogLevel = Field("INFO", description="Python logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL")

    max_audio_bytes: int = Field(64 * MiB, description="Largest decoded upload accepted by any service")
    gpu_vram_mb: int | None = Field(None, description="Queue gateway: GPU capacity override in MB (else detected)")
    queue_gpus: str = Field(
        "", description="Queue gateway: GPUs as `id=MB,...` (e.g. `hostA/0=80000,hostA/1=80000`); empty = GPU_VRAM_MB or detected"
    )
    gpu_host: str = Field("", pattern=r"^[A-Za-z0-9_.-]{0,40}$", description="GPU services: the name this host's "
                          "cards carry at the gateway (`<GPU_HOST>/cuda:<i>`); give each GPU host sharing one gateway "
                          "its own (empty: `cuda:<i>`)")
    queue_reserve_mb: int = Field(
        2560, ge=0,
        description="Queue gateway: MB kept free per detected GPU for the CUDA contexts of the GPU services (~800 MB each for "
        "gary, jerry and terry; leases don't count them); configured sizes are used as given",
    )
    queue_fallback_capacity_mb: int = Field(
        24000, gt=0, description="Queue gateway: size of the placeholder GPU used when none is configured, detected or registered"
    )
    queue_lanes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["generation", "transform", "jerry", "terry", "gary"],
        description="Queue gateway: known lanes (`/tasks` is `generation`, other lanes are `/{lane}/...`)",
    )
    queue_lane_caps: str = Field("transform=1", description="Queue gateway: most concurrent leases per lane, `lane=N,...`")
    queue_lane_lease_ttl: str = Field(
        "",
        description="Queue gateway: per-lane lease TTL seconds for pull-style callers that never heartbeat, `lane=S,...`",
    )
    queue_model_vram: str = Field(
        "", description="Queue gateway: extra model->MB rules `glob=MB,...` checked before the built-in table"
    )
    queue_learn_vram: bool = Field(True, description="Queue gateway: size leases from peaks workers report (+10%) when known")
    queue_lease_ttl_seconds: float = Field(
        60.0, gt=0, description="Queue gateway: a granted lease expires this long after its last heartbeat/status"
    )
    queue_poll_ttl_seconds: float = Field(
        30.0, gt=0, description="Queue gateway: a queued pull/lease request nobody polls for this long is dropped"
    )
    queue_max_attempts: int = Field(2, ge=1, description="Queue gateway: grants per task before an expired lease fails it")
    queue_max_bypass: int = Field(
        4, ge=0, description="Queue gateway: smaller tasks that may overtake a head that does not fit before it gets priority"
    )
    queue_max_queued: int = Field(1000, ge=1, description="Queue gateway: queued tasks per lane before 429")
    queue_key_max_queued: int = Field(50, ge=1, description="Queue gateway: queued tasks per API key before 429 (keys on)")
    queue_key_max_active: int = Field(2, ge=0, description="Queue gateway: concurrent leases per API key (keys on; 0 = no cap)")
    queue_task_retention_seconds: int = Field(3600, gt=0, description="Queue gateway: finished tasks stay readable this long")
    queue_default_duration_seconds: float = Field(
        30.0, gt=0, description="Queue gateway: run time assumed for a model before any has been measured"
    )
    queue_reaper_interval_seconds: float = Field(
        0.5, gt=0, description="Queue gateway: how often expired leases and silent waiters are swept"
    )
    queue_position_interval_seconds: float = Field(
        1.0, gt=0, description="Queue gateway: how often queued callers are told about position changes"
    )
    queue_callback_timeout_seconds: float = Field(5.0, gt=0, description="Queue gateway: timeout of one callback POST")
    queue_callback_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Queue gateway: other gary base URLs a task's callback_url may name, exactly (`http://host:port`; a "
        "bare host means GARY_URL's scheme, port and path on that host); GARY_URL is always allowed",
    )
    queue_callback_attempts: int = Field(8, ge=1, description="Queue gateway: deliveries tried per notification")
    queue_callback_backoff_seconds: float = Field(
        0.5, gt=0, description="Queue gateway: first retry delay of a failed callback (doubles, capped at 30 s, jittered)"
    )
    queue_max_body_bytes: int = Field(65536, ge=1024, description="Queue gateway: largest request body accepted (413 above)")

    gary_output_seconds: float = Field(
        30.0, gt=1, le=60, description="gary: MusicGen output length incl. the re-synthesised prompt (the original's 30 s)"
    )
    gary_terry_timeout_seconds: float = Field(300.0, gt=0, description="gary: how long to wait for terry's /transform")
    gary_heartbeat_seconds: float = Field(
        5.0, gt=0, description="gary: how often a running job heartbeats its queue task and its job record"
    )
    gary_partial_seconds: float = Field(
        5.0, ge=0, description="gary: a generation whose client asked (stream_partials) gets its audio so far every "
        "this many seconds of it (0 = never)")
    gary_max_batch: int = Field(  # 8: a batch of 8 costs ~1.5x one generation on an H100 (bench/results/musicgen_rerun.md)
        8, ge=1, le=64, description="gary: most generations sharing one engine call (solo mode also runs this many at once)"
    )

    terry_model: str = Field("facebook/melodyflow-t24-30secs", description="terry: MelodyFlow checkpoint (repo id or folder)")
    terry_preload: bool = Field(False, description="terry: load the model at start instead of on the first transform")
    terry_idle_unload_seconds: float = Field(
        600.0, ge=0, description="terry: unload the model after this long without a transform (0 = right after each one)"
    )
    terry_vram_mb: int = Field(
        4000, gt=0, description="terry: working VRAM leased (transform lane) for each transform, on top of the weights"
    )
    terry_resident_vram_mb: int = Field(
        5000, gt=0, description="terry: VRAM of the resident lease held while the model is loaded (weights, T5, codec)"
    )
    terry_lease_wait_seconds: float = Field(
        240.0, gt=0, description="terry: longest wait for a gateway lease before answering 503 (gary gives up at 300 s)"
    )
    terry_max_input_seconds: float = Field(
        180.0, gt=0, description="terry: longest input accepted (longer than the 30 s window is processed in windows)"
    )
    terry_legacy_32k: bool = Field(
        False, description="terry: the original's 32 kHz-into-48 kHz-codec quirk (pitched-up model view, ~45 s window)"
    )

    jerry_model: str = Field(
        "stabilityai/stable-audio-open-small", description="jerry: standard SAO-small checkpoint (repo id or folder)"
    )
    jerry_riffs_dir: Path | None = Field(None, description="jerry: riff library folder (default DATA_DIR/riffs)")
    jerry_max_batch: int = Field(8, ge=1, le=64, description="jerry: most concurrent requests batched into one sampler run")
    jerry_batch_window_ms: float = Field(
        0.0, ge=0, description="jerry: extra wait for requests to batch with (0: only those queued while the GPU was busy)"
    )
    jerry_max_models: int = Field(2, ge=1, description="jerry: models kept loaded (LRU; the standard one always stays)")
    jerry_peak_normalize: bool = Field(
        True, description="jerry: peak-normalise outputs to 0 dBFS by default (requests may pass normalize=false)"
    )
    jerry_max_input_seconds: float = Field(
        600.0, gt=0, description="jerry: longest decoded upload accepted (only the first model window is used)"
    )
    jerry_lease_vram_mb: int = Field(3000, gt=0, description="jerry: VRAM of the permanent resident lease it holds")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("model_allow_owners", "api_keys", "queue_lanes", "queue_callback_hosts", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @property
    def callback_bases(self) -> set[str]:
        """The only callback base URLs the gateway POSTs to (scheme, host, port and path fixed: no SSRF, no other port
        or route on a trusted host); see garycommon.keys.callback_base for the normal form."""
        from .keys import allowed_callback_bases

        return allowed_callback_bases(self.gary_url, self.queue_callback_hosts)

    @property
    def demo_models_dir(self) -> Path:
        """Where demo models are written and read: LOCAL_MODELS_DIR, else DATA_DIR/demo-models (every service and
        `gary-stack up` agree, so one folder serves the whole stack)."""
        return self.local_models_dir if self.local_models_dir is not None else self.data_dir / "demo-models"

    def with_demo_models_dir(self) -> Settings:
        """These settings with LOCAL_MODELS_DIR pinned to `demo_models_dir`."""
        return self.model_copy(update={"local_models_dir": self.demo_models_dir})

    @property
    def queue_mode(self) -> str:
        """`solo` without a gateway (each service alone on its GPU), else `gateway`; told in every /health."""
        return "gateway" if self.queue_url else "solo"

    def announce_queue_mode(self, log: logging.Logger, service: str) -> None:
        """One start-up line saying how this service shares the GPU (the operator's first question)."""
        if self.queue_url:
            log.info("%s: GPU queue gateway at %s (VRAM leases, shared GPU)", service, self.queue_url)
            if self.api_keys and self.service_key is None:
                log.error("%s: API_KEYS is set but SERVICE_KEY is not: the gateway will refuse this service; set the "
                          "same SERVICE_KEY on every service (docs/security.md)", service)
        else:
            log.info("%s: running solo: QUEUE_URL is empty, so no gateway and no leases; one job on the GPU at a "
                     "time", service)

    @property
    def hf_token_value(self) -> str | None:
        return self.hf_token.get_secret_value() if self.hf_token else None


@lru_cache
def get_settings() -> Settings:
    """Process-wide settings; tests build their own `Settings(...)` instead of mutating this one."""
    return Settings()


def markdown_table() -> str:
    """The README's configuration table, generated so it can't drift from the code (tests/test_docs_and_deploy.py)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
        if isinstance(default, list):
            default = ",".join(default)
        shown = "" if default is None else str(default)
        rows.append(f"| `{name.upper()}` | `{shown}` | {(field.description or '').replace('|', '/')} |")
    return "\n".join(rows)
