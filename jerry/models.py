"""Which SAO models are loaded: the standard one (resident, loaded and warmed at start-up) plus an LRU of fine-tunes.

Loading runs on the GPU worker thread (in order with generations), so the event loop stays responsive and `/health`
only ever reports state — it never triggers a download. Fine-tunes are only fetched from allowed repos.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from garycommon.devices import pick_device
from garycommon.errors import ErrorCode, GaryError, ModelLoadError
from garycommon.hub import check_allowed, is_repo_id, local_dir_for, resolve_model_dir
from garycommon.settings import Settings

from .batcher import Batcher
from .sao import DEFAULT_MODEL, SAOEngine
from .sao.types import SAOModel

log = logging.getLogger(__name__)

STANDARD_KEY = "standard_saos"
RETRY_FIRST_SECONDS = 15.0
RETRY_MAX_SECONDS = 300.0
EMPTY_PROMPTS: dict[str, Any] = {"version": 1, "dice": {"generic": [], "drums": [], "instrumental": []}}
_CHECKPOINT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]{0,200}\.(ckpt|safetensors|pt|pth|bin)$")


@dataclass
class ModelEntry:
    key: str
    type: str  # standard | finetune
    source: str
    checkpoint: str | None
    engine: SAOModel
    prompts: dict[str, Any] | None = None
    loaded_at: float = field(default_factory=time.time)

    @property
    def sample_rate(self) -> int:
        return int(self.engine.sample_rate)

    @property
    def window_samples(self) -> int:
        return int(self.engine.cfg.sample_size)

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sample_rate

    @property
    def objective(self) -> str:
        return str(self.engine.cfg.objective)

    @property
    def downsampling(self) -> int:
        return int(self.engine.cfg.vae.downsampling_ratio)

    def describe(self, device: str) -> dict[str, Any]:
        return {"type": self.type, "source": self.source, "device": device, "sample_rate": self.sample_rate,
                "sample_size": self.window_samples}


def check_loadable(name: str, settings: Settings, *, client_named: bool, base: str = DEFAULT_MODEL) -> None:
    """What jerry hands its engine to load: repo ids on the allow-list (the standard model and a fine-tune's base
    always allowed); a filesystem path only when the operator, not a client, named it."""
    if Path(name).is_dir() and not is_repo_id(name):
        if client_named:
            raise ModelLoadError(ErrorCode.MODEL_NOT_ALLOWED, "clients may name hub repos only, not local paths")
        return
    check_allowed(name, settings, extra_allowed=(DEFAULT_MODEL, base))


def finetune_key(repo: str, checkpoint: str) -> str:
    return f"finetune_{repo}_{checkpoint}"


class ModelRegistry:
    def __init__(self, settings: Settings, batcher: Batcher, device: torch.device | None = None) -> None:
        self.settings = settings
        self.batcher = batcher
        self.device = device or pick_device(settings.device)
        self.state = "starting"  # starting | loading | ready | error
        self.error: str | None = None
        self.demo = bool(settings.demo_models)
        self._entries: OrderedDict[str, ModelEntry] = OrderedDict()
        self._loading: dict[str, asyncio.Future[ModelEntry]] = {}
        self.active_key: str | None = None

    # -- standard model ---------------------------------------------------------------------------------------------
    async def load_standard(self) -> bool:
        """One attempt to load + warm up the standard model on the worker thread; False (and the reason kept for
        /health and 503s) when it fails."""
        self.state = "loading"
        started = time.perf_counter()
        try:
            engine = await self.batcher.call(lambda: self._load_and_warm(self.settings.jerry_model))
        except Exception as exc:  # any failure is reported; the server keeps serving info routes
            self.state, self.error = "error", str(exc)
            log.error("standard model %s failed to load: %s", self.settings.jerry_model, exc)
            return False
        self._entries[STANDARD_KEY] = ModelEntry(STANDARD_KEY, "standard", self.settings.jerry_model, None, engine)
        self.active_key = self.active_key or STANDARD_KEY
        self.state, self.error = "ready", None
        self.demo = bool(engine.demo)
        log.info("standard model %s ready on %s in %.1f s%s", self.settings.jerry_model, self.device,
                 time.perf_counter() - started, " (DEMO: tiny random weights)" if self.demo else "")
        return True

    async def retry_standard(self) -> None:
        """Retry with back-off, so a fixed cause (token added, hub back, disk freed) heals without a restart."""
        delay = RETRY_FIRST_SECONDS
        while True:
            log.info("retrying the standard model in %.0f s", delay)
            await asyncio.sleep(delay)
            if await self.load_standard():
                return
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    def _load_and_warm(self, name: str) -> SAOModel:
        check_loadable(name, self.settings, client_named=False)
        engine = SAOEngine.load(name, self.settings, self.device, max_batch=self.settings.jerry_max_batch)
        engine.warmup()
        return engine

    def standard(self) -> ModelEntry:
        entry = self._entries.get(STANDARD_KEY)
        if entry is not None:
            return entry
        if self.state == "error":
            raise GaryError(ErrorCode.MODEL_LOAD_FAILED, f"model could not be loaded: {self.error}")
        raise GaryError(ErrorCode.SERVICE_UNAVAILABLE, "model is still loading; retry in a few seconds",
                        details={"retry_after": 5})

    # -- any model --------------------------------------------------------------------------------------------------
    async def get(self, model_type: str, repo: str | None, checkpoint: str | None) -> ModelEntry:
        if model_type != "finetune":
            entry = self.standard()
            self._touch(STANDARD_KEY)
            return entry
        if not repo or not checkpoint:
            raise GaryError(ErrorCode.VALIDATION_ERROR, "finetune_repo and finetune_checkpoint are required for finetune models")
        self._check_finetune(repo, checkpoint)
        key = finetune_key(repo, checkpoint)
        if key in self._entries:
            self._touch(key)
            return self._entries[key]
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load_finetune(key, repo, checkpoint))
            self._loading[key] = pending
            pending.add_done_callback(lambda _f: self._loading.pop(key, None))
        return await asyncio.shield(pending)

    def _check_finetune(self, repo: str, checkpoint: str) -> None:
        check_allowed(repo, self.settings)
        if not _CHECKPOINT.match(checkpoint) or ".." in checkpoint:
            raise GaryError(ErrorCode.VALIDATION_ERROR,
                            "finetune_checkpoint must be a file name ending in .ckpt, .safetensors, .pt, .pth or .bin")

    async def _load_finetune(self, key: str, repo: str, checkpoint: str) -> ModelEntry:
        def load() -> tuple[SAOModel, dict[str, Any] | None]:
            base = self.settings.jerry_model
            check_loadable(repo, self.settings, client_named=True, base=base)
            check_loadable(base, self.settings, client_named=False, base=base)
            engine = SAOEngine.load(repo, self.settings, self.device, checkpoint=checkpoint, base=base,
                                    max_batch=self.settings.jerry_max_batch)
            engine.warmup()
            return engine, self._read_prompts(repo)

        try:
            engine, prompts = await self.batcher.call(load)
        except GaryError as exc:
            if exc.code == ErrorCode.MODEL_NOT_FOUND:  # a client-named file that is not there: their error, not ours
                raise GaryError(ErrorCode.NOT_FOUND, exc.message) from exc
            raise
        entry = ModelEntry(key, "finetune", repo, checkpoint, engine, prompts=prompts)
        self._entries[key] = entry
        self._touch(key)
        self._evict()
        return entry

    def _read_prompts(self, repo: str) -> dict[str, Any] | None:
        """The repo's prompts.json (fetched with the checkpoint, on the worker thread), or None."""
        folder = local_dir_for(repo, self.settings)
        try:
            if folder is None:
                folder = resolve_model_dir(repo, ["prompts.json"], self.settings)
            data = json.loads((Path(folder) / "prompts.json").read_text())
            return data if isinstance(data, dict) else None
        except (GaryError, OSError, ValueError):
            return None

    def _touch(self, key: str) -> None:
        if key in self._entries:
            self._entries.move_to_end(key)
            self.active_key = key

    def _evict(self) -> None:
        while len(self._entries) > self.settings.jerry_max_models:
            victim = next((k for k in self._entries if k != STANDARD_KEY), None)
            if victim is None:
                return
            log.info("unloading %s (LRU, max %d models)", victim, self.settings.jerry_max_models)
            self._entries.pop(victim)
            if self.active_key == victim:
                self.active_key = STANDARD_KEY if STANDARD_KEY in self._entries else None

    async def clear(self) -> list[str]:
        """Drop every fine-tune (the standard model stays resident: it holds the permanent lease)."""
        dropped = [k for k in self._entries if k != STANDARD_KEY]
        for key in dropped:
            self._entries.pop(key)
        self.active_key = STANDARD_KEY if STANDARD_KEY in self._entries else None
        await self.batcher.call(_release_memory)
        return dropped

    # -- reporting --------------------------------------------------------------------------------------------------
    def entries(self) -> dict[str, ModelEntry]:
        return dict(self._entries)

    def usage_order(self) -> list[str]:
        return list(self._entries)

    def cache_status(self) -> dict[str, Any]:
        keys = list(self._entries)
        return {"loaded_models": keys, "usage_order": keys,
                "cache_utilization": f"{len(keys)}/{self.settings.jerry_max_models}"}

    def select(self, key: str | None, repo: str | None, checkpoint: str | None, prefer: str) -> ModelEntry | None:
        """/models/prompts: explicit key, then repo+checkpoint, then the active / latest fine-tune / latest model."""
        if key:
            return self._entries.get(key)
        order = list(reversed(self._entries))
        if repo and checkpoint:
            return next((self._entries[k] for k in order if repo in self._entries[k].source
                         and checkpoint in (self._entries[k].checkpoint or "")), None)
        if prefer == "active" and self.active_key in self._entries:
            return self._entries[self.active_key]
        if prefer == "finetune":
            found = next((self._entries[k] for k in order if self._entries[k].type == "finetune"), None)
            if found is not None:
                return found
        return self._entries[order[0]] if order else None


def _release_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
