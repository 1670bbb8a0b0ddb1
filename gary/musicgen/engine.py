"""MusicGenEngine: resident models (LRU), request batching, the native model with its CUDA fast path.

The original reloaded the model for every request; here models stay resident (up to `max_resident`, least recently
used evicted first) until the caller unloads them because the queue needs the VRAM. Blocking calls: run them in a
worker thread, never on the event loop. Which names may be loaded, and from where (hub, local folders, demo
stand-ins), is the service's: it hands the engine a `ModelSource` (gary's: gary.catalog.AllowedModels).
"""

from __future__ import annotations

import gc
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from garycommon.devices import cpu_dtype, pick_device
from garycommon.errors import ErrorCode, GaryError, ModelLoadError
from garycommon.hub import local_dir_for, resolve_model_dir
from garycommon.settings import Settings

from .checkpoint import COMPRESSION_FILE, LM_FILE
from .model import MusicGenModel
from .types import GenerationRequest, GenerationResult, ModelSource, Partial

log = logging.getLogger(__name__)

_FRAMES = 30 * 50 + 4  # one 30 s sequence incl. the delay tail, for KV-cache estimates
# The published sizes (LM parameters; width, layers), for lease estimates before a model is loaded.
SIZE_PARAMS: dict[str, int] = {"small": 420_000_000, "medium": 1_500_000_000, "large": 3_300_000_000}
SIZE_SHAPES: dict[str, tuple[int, int]] = {"small": (1024, 24), "medium": (1536, 48), "large": (2048, 48)}


class LocalModels:
    """The source of an engine given none: folders and LOCAL_MODELS_DIR/<name> only, never a download (tests,
    benchmarks); sizes guessed from the name, else large."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def checkpoint(self, name: str) -> Path:
        if local_dir_for(name, self.settings) is None:
            raise ModelLoadError(ErrorCode.MODEL_NOT_FOUND, f"model {name!r} is not a local folder (this engine was "
                                 "given no model source that downloads)")
        return resolve_model_dir(name, [LM_FILE, COMPRESSION_FILE], self.settings)

    def text_encoder(self, name: str) -> str:
        return name

    def size(self, name: str) -> str:
        return next((size for size in ("small", "medium", "large") if size in name.lower()), "large")


def validate(req: GenerationRequest) -> None:
    """Reject nonsense parameters with a client-visible error before any GPU work."""
    problems = []
    if not (isinstance(req.top_k, int) and req.top_k >= 0):
        problems.append("top_k must be an integer >= 0")
    if not (0.0 <= req.top_p <= 1.0):
        problems.append("top_p must be in [0, 1]")
    if not (math.isfinite(req.temperature) and req.temperature >= 0):
        problems.append("temperature must be >= 0")
    if not math.isfinite(req.cfg_coef):
        problems.append("cfg_coef must be finite")
    if not (math.isfinite(req.duration) and req.duration > 0):
        problems.append("duration must be > 0")
    if req.prompt is not None and (req.prompt.dim() != 2 or not torch.isfinite(req.prompt).all()):
        problems.append("prompt must be a finite [channels, samples] tensor")
    if req.prompt_sr <= 0:
        problems.append("prompt_sr must be > 0")
    if problems:
        raise GaryError(ErrorCode.VALIDATION_ERROR, "; ".join(problems))


class MusicGenEngine:
    def __init__(self, settings: Settings, device: torch.device | None = None, *, source: ModelSource | None = None,
                 max_resident: int = 2, dtype: torch.dtype | None = None) -> None:
        self.settings = settings
        self.source: ModelSource = source if source is not None else LocalModels(settings)
        self.device = device or pick_device(settings.device)
        self.max_resident = max(1, max_resident)
        # CUDA: fp16; CPU: CPU_DTYPE (auto = bf16 where the CPU runs it natively). Logits and sampling stay fp32.
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else cpu_dtype(settings.cpu_dtype))
        self._models: OrderedDict[str, MusicGenModel] = OrderedDict()
        self._t5: dict[str, tuple[Any, torch.nn.Module]] = {}
        self._lock = threading.RLock()  # guards the dicts only: resident()/vram_mb() never wait for a load
        self._load_lock = threading.Lock()  # one load at a time (a hub download can take minutes)
        # One generation at a time per engine: CUDA graph capture must not interleave with other GPU work.
        self._gen_lock = threading.Lock()

    # -- residency -------------------------------------------------------------------------------------------------
    def _t5_for(self, name: str) -> tuple[Any, torch.nn.Module]:
        if name not in self._t5:
            from garycommon.textenc import load_t5

            self._t5[name] = load_t5(self.source.text_encoder(name), self.settings, self.device, torch.float32)
        return self._t5[name]

    def _load(self, name: str) -> MusicGenModel:
        model = MusicGenModel.load(name, self.source.checkpoint(name), self.device, self.dtype, self._t5_for)
        if self.device.type == "cuda":
            from .fastpath import FastDecoder

            model.fast = FastDecoder(model)
            # compile + capture now, at load, so the first request pays neither (seconds per model size)
            log.info("%s: decode step compiled and captured in %.1f s", name, model.fast.warmup())
        return model

    def _resident_model(self, name: str) -> MusicGenModel | None:
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            return None

    def _get(self, name: str) -> MusicGenModel:
        model = self._resident_model(name)
        if model is not None:
            return model
        with self._load_lock:
            model = self._resident_model(name)  # loaded by another thread while this one waited
            if model is not None:
                return model
            with self._lock:  # make room first, so old and new weights are never both on the GPU
                evicted = []
                while len(self._models) >= self.max_resident:
                    evicted.append(self._models.popitem(last=False)[0])
            if evicted:
                log.info("unloading %s (LRU, max_resident=%d)", ", ".join(evicted), self.max_resident)
                self._release()
            log.info("loading %s on %s", name, self.device)
            model = self._load(name)
            with self._lock:
                self._models[name] = model
            return model

    def _release(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def preload(self, model_name: str) -> None:
        self._get(model_name)

    def model(self, model_name: str) -> MusicGenModel:
        """The resident model (loading it if needed): sample_rate, channels, max_duration, frame_rate."""
        return self._get(model_name)

    def unload(self, model_name: str | None = None) -> None:
        with self._lock:
            if model_name is None:
                self._models.clear()
                self._t5.clear()
            else:
                self._models.pop(model_name, None)
            self._release()

    def resident(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def vram_mb(self, model_name: str) -> int:
        """Lease size: weights + a batch-of-one KV cache (x2 for CFG) + decode workspace, with 20% headroom."""
        with self._lock:
            model = self._models.get(model_name)
        if model is not None:
            cfg = model.lm.cfg
            weights = model.param_bytes()
            cache = 2 * 2 * cfg.num_layers * cfg.dim * _FRAMES * torch.finfo(model.dtype).bits // 8
        else:
            size = self.source.size(model_name)
            weights = SIZE_PARAMS[size] * 2 + 60_000_000 * 4
            dim, layers = SIZE_SHAPES[size]
            cache = 2 * 2 * layers * dim * _FRAMES * 2
        t5 = 110_000_000 * 4
        return int((weights + cache + t5) * 1.2 / 2**20) + 512

    # -- generation ------------------------------------------------------------------------------------------------
    def generate(self, requests: list[GenerationRequest], progress: Callable[[int, int], None] | None = None,
                 partial: Partial | None = None, partial_seconds: float = 0.0) -> list[GenerationResult]:
        """Generate every request; those naming the same model run as one batch. Results keep the request order.
        `partial` gets (index in `requests`, audio so far, rate) every `partial_seconds` of audio."""
        for req in requests:
            validate(req)
        groups: OrderedDict[str, list[int]] = OrderedDict()
        for i, req in enumerate(requests):
            groups.setdefault(req.model_name, []).append(i)
        results: list[GenerationResult | None] = [None] * len(requests)
        for name, idx in groups.items():
            model = self._get(name)
            batch = [requests[i] for i in idx]
            try:
                with self._gen_lock:
                    hook = None if partial is None else (lambda row, audio, sr, idx=idx: partial(idx[row], audio, sr))
                    outs = model.generate(batch, progress, hook, partial_seconds)
            except torch.cuda.OutOfMemoryError as exc:
                self._release()
                raise GaryError(ErrorCode.GPU_OOM, f"out of GPU memory generating with {name}") from exc
            for i, out in zip(idx, outs, strict=True):
                results[i] = out
        return [r for r in results if r is not None]
