"""audiocraft, the reference library, for the parity tests and the benchmarks (bench/ imports it from here); never
part of the product.

audiocraft 1.3.0 imports `xformers.ops` at module import time but, with its default torch attention backend, only
uses `ops.unbind` and the `LowerTriangularMask` type from it. Where no xformers wheel exists for the installed torch,
`ensure_importable` registers a minimal stand-in module providing exactly those two (plus a `memory_efficient_attention`
that raises), which is enough for every code path MusicGen inference takes. T5 is resolved through garycommon's loader
(LOCAL_MODELS_DIR / hub cache) instead of audiocraft's hard-wired hub download.
"""

from __future__ import annotations

import secrets
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gary.musicgen.checkpoint import COMPRESSION_FILE, LM_FILE
from gary.musicgen.types import GenerationRequest, GenerationResult
from garycommon.hub import resolve_model_dir
from garycommon.settings import Settings


def _xformers_stub() -> None:
    ops = types.ModuleType("xformers.ops")

    class LowerTriangularMask:  # only used as a marker by audiocraft's torch backend
        pass

    def memory_efficient_attention(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError("xformers stand-in: use audiocraft's default torch attention backend")

    ops.unbind = torch.unbind  # type: ignore[attr-defined]
    ops.LowerTriangularMask = LowerTriangularMask  # type: ignore[attr-defined]
    ops.memory_efficient_attention = memory_efficient_attention  # type: ignore[attr-defined]
    root = types.ModuleType("xformers")
    root.ops = ops  # type: ignore[attr-defined]
    sys.modules["xformers"] = root
    sys.modules["xformers.ops"] = ops


def ensure_importable() -> None:
    """Import audiocraft, with the xformers stand-in when the real package is missing."""
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        _xformers_stub()
    import audiocraft  # noqa: F401


def route_t5(settings: Settings) -> None:
    """Make audiocraft's T5Conditioner load `t5-base` etc. through garycommon.textenc (local folder or hub cache)."""
    ensure_importable()
    from audiocraft.modules import conditioners
    from transformers import AutoTokenizer, T5EncoderModel

    from garycommon.textenc import t5_dir

    class _Tok:
        @staticmethod
        def from_pretrained(name: str, *args: Any, **kwargs: Any):  # noqa: ANN205 - transformers type
            return AutoTokenizer.from_pretrained(str(t5_dir(name, settings)))

    class _Enc:
        @staticmethod
        def from_pretrained(name: str, *args: Any, **kwargs: Any) -> T5EncoderModel:
            return T5EncoderModel.from_pretrained(str(t5_dir(name, settings)))

    conditioners.T5Tokenizer = _Tok  # type: ignore[attr-defined]
    conditioners.T5EncoderModel = _Enc  # type: ignore[attr-defined]


def load_reference(folder: Path, settings: Settings, device: torch.device | str) -> Any:
    """audiocraft's MusicGen from a folder holding state_dict.bin + compression_state_dict.bin."""
    route_t5(settings)
    from audiocraft.models import MusicGen

    return MusicGen.get_pretrained(str(folder), device=str(device))


def reference_generate(model: Any, prompt: torch.Tensor | None, prompt_sr: int, descriptions: list[str | None],
                       *, duration: float, top_k: int, top_p: float, temperature: float, cfg_coef: float, seed: int,
                       progress: Callable[[int, int], None] | None = None, return_tokens: bool = False,
                       extend_stride: float = 18.0) -> Any:
    """One audiocraft call (batched over `descriptions`), seeded with torch's global RNG as audiocraft expects."""
    model.set_generation_params(use_sampling=True, top_k=top_k, top_p=top_p, temperature=temperature,
                                duration=duration, cfg_coef=cfg_coef, extend_stride=extend_stride)
    model.set_custom_progress_callback(progress)
    torch.manual_seed(seed)
    with torch.no_grad():
        if prompt is None:
            return model.generate(descriptions, progress=progress is not None, return_tokens=return_tokens)
        return model.generate_continuation(prompt, prompt_sr, descriptions, progress=progress is not None,
                                           return_tokens=return_tokens)


class ReferenceEngine:
    """audiocraft behind `MusicGenEngine.generate`'s interface, one request per audiocraft call, models loaded from
    folders or LOCAL_MODELS_DIR/<name>: the side-by-side check that both compute the same thing."""

    def __init__(self, settings: Settings, device: torch.device | str = "cpu") -> None:
        self.settings = settings
        self.device = device
        self._models: dict[str, Any] = {}

    def model(self, name: str) -> Any:
        if name not in self._models:
            folder = resolve_model_dir(name, [LM_FILE, COMPRESSION_FILE], self.settings)
            self._models[name] = load_reference(folder, self.settings, self.device)
        return self._models[name]

    def generate(self, requests: list[GenerationRequest],
                 progress: Callable[[int, int], None] | None = None) -> list[GenerationResult]:
        out = []
        for req in requests:
            model = self.model(req.model_name)
            seed = req.seed if req.seed is not None else secrets.randbits(63)
            prompt = req.prompt[None] if req.prompt is not None else None
            audio = reference_generate(model, prompt, req.prompt_sr, [req.description or None], duration=req.duration,
                                       top_k=req.top_k, top_p=req.top_p, temperature=req.temperature,
                                       cfg_coef=req.cfg_coef, seed=seed, progress=progress)
            out.append(GenerationResult(audio[0].float().cpu(), model.sample_rate, seed))
        return out
