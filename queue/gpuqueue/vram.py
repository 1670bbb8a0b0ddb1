"""GPU capacities (configured, detected or registered) and lease sizes per model.

The gateway never loads a model; it only needs to know how much memory each task will take and how much each GPU
has. Capacity comes from QUEUE_GPUS, else GPU_VRAM_MB, else the GPUs of the gateway's own host (NVML through
`nvidia-smi`, or torch when it happens to be installed; imported lazily so the gateway's image needs neither), else
a placeholder that workers replace by registering their real GPUs (`POST /gpus`).
"""

from __future__ import annotations

import fnmatch
import logging
import shutil
import subprocess
from dataclasses import dataclass

from garycommon.settings import Settings

log = logging.getLogger(__name__)

FALLBACK_GPU_ID = "default"

# First match wins (case-insensitive globs on the model id). Sizes are peak MB while running (docs/gateway.md, leases).
BUILTIN_MODEL_MB: tuple[tuple[str, int], ...] = (
    ("*melodyflow*", 9000),
    ("*stable-audio-open-small*", 2000),
    ("*ace*step*", 11000),
    ("*musicgen*melody*", 5000),
    ("*large*", 9000),
    ("*medium*", 5000),
    ("*small*", 2000),
)
# When nothing matches (community fine-tunes name no size): a conservative guess per lane.
LANE_DEFAULT_MB: dict[str, int] = {"generation": 5000, "transform": 9000, "jerry": 2000}
DEFAULT_MB = 5000
LEARNED_MARGIN = 1.10


@dataclass(frozen=True)
class GpuSpec:
    id: str
    capacity_mb: int


def parse_pairs(text: str, what: str) -> list[tuple[str, str]]:
    """`a=1,b=2` -> [(a, 1), (b, 2)]; a malformed entry is a configuration error, reported with its setting."""
    out: list[tuple[str, str]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.rpartition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"{what}: expected name=value, got {item!r}")
        out.append((name.strip(), value.strip()))
    return out


def parse_int_map(text: str, what: str) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in parse_pairs(text, what)}
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from exc


def parse_float_map(text: str, what: str) -> dict[str, float]:
    try:
        return {k: float(v) for k, v in parse_pairs(text, what)}
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from exc


def detect_gpus(reserve_mb: int) -> list[GpuSpec]:
    """The local GPUs' total memory minus a reserve for CUDA contexts; [] when there are none or no way to ask."""
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            out = subprocess.run([exe, "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            gpus = [GpuSpec(f"cuda:{idx.strip()}", int(float(mb)) - reserve_mb)
                    for idx, mb in (line.split(",") for line in out.strip().splitlines() if "," in line)]
            if gpus:
                return gpus
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            log.warning("nvidia-smi could not be read: %s", exc)
    try:
        import torch  # optional and heavy: only where installed, only at start-up
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [GpuSpec(f"cuda:{i}", torch.cuda.get_device_properties(i).total_memory // (1024 * 1024) - reserve_mb)
            for i in range(torch.cuda.device_count())]


def configured_gpus(settings: Settings) -> tuple[list[GpuSpec], bool]:
    """GPUs to register at start-up and whether they are only a placeholder (replaced by the first registration)."""
    if settings.queue_gpus.strip():
        return [GpuSpec(k, v) for k, v in parse_int_map(settings.queue_gpus, "QUEUE_GPUS").items()], False
    if settings.gpu_vram_mb:
        return [GpuSpec("cuda:0", settings.gpu_vram_mb)], False
    found = detect_gpus(settings.queue_reserve_mb)
    if found:
        log.info("detected GPUs: %s", ", ".join(f"{g.id}={g.capacity_mb} MB" for g in found))
        return found, False
    log.warning("no GPU configured or detected: using a %d MB placeholder %r until a worker registers its GPUs "
                "(set QUEUE_GPUS or GPU_VRAM_MB)", settings.queue_fallback_capacity_mb, FALLBACK_GPU_ID)
    return [GpuSpec(FALLBACK_GPU_ID, settings.queue_fallback_capacity_mb)], True


class ModelTable:
    """Lease size of a task: caller's explicit MB > learned peak (+10%) > configured rule > built-in table > lane default."""

    def __init__(self, settings: Settings) -> None:
        self.rules: list[tuple[str, int]] = [
            (pattern.lower(), mb) for pattern, mb in parse_int_map(settings.queue_model_vram, "QUEUE_MODEL_VRAM").items()
        ] + list(BUILTIN_MODEL_MB)
        self.learn = settings.queue_learn_vram

    def table_mb(self, model: str, lane: str) -> int:
        name = model.lower()
        for pattern, mb in self.rules:
            if fnmatch.fnmatchcase(name, pattern):
                return mb
        return LANE_DEFAULT_MB.get(lane, DEFAULT_MB)

    def lease_mb(self, model: str, lane: str, explicit: int | None, learned: int | None) -> int:
        if explicit is not None:
            return explicit
        if self.learn and learned:
            return int(learned * LEARNED_MARGIN)
        return self.table_mb(model, lane)
