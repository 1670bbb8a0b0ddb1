"""MusicGenEngine: resident models (LRU), request batching, native fast path or the audiocraft reference backend.

The original reloaded the model for every request; here models stay resident (up to `max_resident`, least recently
used evicted first) until the caller unloads them because the queue needs the VRAM. Blocking calls: run them in a
worker thread, never on the event loop.
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

from garycommon.devices import pick_device
from garycommon.errors import ErrorCode, GaryError
from garycommon.hub import check_allowed, resolve_model_dir
from garycommon.settings import Settings

from .catalogue import MODEL_CATALOGUE, SIZE_PARAMS, size_of
from .checkpoint import COMPRESSION_FILE, LM_FILE
from .model import MusicGenModel
from .types import GenerationRequest, GenerationResult, Partial

log = logging.getLogger(__name__)

_CATALOGUE = [n for names in MODEL_CATALOGUE.values() for n in names]
_FRAMES = 30 * 50 + 4  # one 30 s sequence incl. the delay tail, for KV-cache estimates


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
    def __init__(self, settings: Settings, device: torch.device | None = None, *, backend: str = "native",
                 max_resident: int = 2, dtype: torch.dtype | None = None) -> None:
        if backend not in ("native", "audiocraft"):
            raise ValueError(f"unknown backend {backend!r}")
        self.settings = settings
        self.device = device or pick_device(settings.device)
        self.backend = backend
        self.max_resident = max(1, max_resident)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._t5: dict[str, tuple[Any, torch.nn.Module]] = {}
        self._lock = threading.RLock()  # guards the dicts only: resident()/vram_mb() never wait for a load
        self._load_lock = threading.Lock()  # one load at a time (a hub download can take minutes)
        # One generation at a time per engine: CUDA graph capture must not interleave with other GPU work.
        self._gen_lock = threading.Lock()

    # -- residency -------------------------------------------------------------------------------------------------
    def _folder(self, name: str) -> Path:
        if Path(name).is_dir():  # an operator-given local folder is always allowed
            return resolve_model_dir(name, [LM_FILE, COMPRESSION_FILE], self.settings)
        check_allowed(name, self.settings, _CATALOGUE)  # also keeps demo-mode names to safe owner/name ids
        if self.settings.demo_models:
            from .demo import install_demo

            return Path(install_demo(self.settings, [name])[0])
        return resolve_model_dir(name, [LM_FILE, COMPRESSION_FILE], self.settings)

    def _t5_for(self, name: str) -> tuple[Any, torch.nn.Module]:
        if name not in self._t5:
            from garycommon.textenc import load_t5

            source = name
            if self.settings.demo_models:  # demo T5 sits beside the demo checkpoints (DATA_DIR/models by default)
                from .demo import demo_root

                if (demo_root(self.settings) / name).is_dir():
                    source = str(demo_root(self.settings) / name)
            self._t5[name] = load_t5(source, self.settings, self.device, torch.float32)
        return self._t5[name]

    def _load(self, name: str) -> Any:
        folder = self._folder(name)
        if self.backend == "audiocraft":
            from .reference import load_reference

            return load_reference(folder, self.settings, self.device)
        model = MusicGenModel.load(name, folder, self.device, self.dtype, self._t5_for)
        if self.device.type == "cuda":
            from .fastpath import FastDecoder

            model.fast = FastDecoder(model)
            # compile + capture now, at load, so the first request pays neither (seconds per model size)
            log.info("%s: decode step compiled and captured in %.1f s", name, model.fast.warmup())
        return model

    def _resident_model(self, name: str) -> Any:
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            return None

    def _get(self, name: str) -> Any:
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
            log.info("loading %s on %s (%s backend)", name, self.device, self.backend)
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

    def model(self, model_name: str) -> Any:
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
        if isinstance(model, MusicGenModel):
            cfg = model.lm.cfg
            weights = model.param_bytes()
            cache = 2 * 2 * cfg.num_layers * cfg.dim * _FRAMES * torch.finfo(model.dtype).bits // 8
        else:
            params = SIZE_PARAMS[size_of(model_name)]
            weights = params * 2 + 60_000_000 * 4
            dim, layers = {"small": (1024, 24), "medium": (1536, 48), "large": (2048, 48)}[size_of(model_name)]
            cache = 2 * 2 * layers * dim * _FRAMES * 2
        t5 = 110_000_000 * 4
        return int((weights + cache + t5) * 1.2 / 2**20) + 512

    # -- generation ------------------------------------------------------------------------------------------------
    def generate(self, requests: list[GenerationRequest], progress: Callable[[int, int], None] | None = None,
                 partial: Partial | None = None, partial_seconds: float = 0.0) -> list[GenerationResult]:
        """Generate every request; those naming the same model run as one batch. Results keep the request order.
        `partial` gets (index in `requests`, audio so far, rate) every `partial_seconds` of audio (native backend)."""
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
                    if self.backend == "audiocraft":
                        outs = [self._reference_one(model, r, progress) for r in batch]
                    else:
                        hook = None if partial is None else (lambda row, audio, sr, idx=idx: partial(idx[row], audio, sr))
                        outs = model.generate(batch, progress, hook, partial_seconds)
            except torch.cuda.OutOfMemoryError as exc:
                self._release()
                raise GaryError(ErrorCode.GPU_OOM, f"out of GPU memory generating with {name}") from exc
            for i, out in zip(idx, outs, strict=True):
                results[i] = out
        return [r for r in results if r is not None]

    def _reference_one(self, model: Any, req: GenerationRequest,
                       progress: Callable[[int, int], None] | None) -> GenerationResult:
        import secrets

        from .reference import reference_generate

        seed = req.seed if req.seed is not None else secrets.randbits(63)
        prompt = req.prompt[None] if req.prompt is not None else None
        audio = reference_generate(model, prompt, req.prompt_sr, [req.description or None], duration=req.duration,
                                   top_k=req.top_k, top_p=req.top_p, temperature=req.temperature,
                                   cfg_coef=req.cfg_coef, seed=seed, progress=progress)
        return GenerationResult(audio[0].float().cpu(), model.sample_rate, seed)
