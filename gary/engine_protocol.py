"""The part of the MusicGen engine (`gary.musicgen.MusicGenEngine`) that gary's service codes against.

Every call but `resident` and `vram_mb` may load weights or run the GPU: gary makes them on its GPU worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # (importing gary.musicgen loads the whole engine)
    from .musicgen.types import GenerationRequest, GenerationResult, Partial


class GenerationEngine(Protocol):
    def generate(self, requests: list[GenerationRequest], progress: Callable[[int, int], None] | None = None,
                 partial: Partial | None = None, partial_seconds: float = 0.0) -> list[GenerationResult]:
        """Results in request order; `partial(index, audio so far, rate)` every `partial_seconds` of audio."""
        ...

    def preload(self, model_name: str) -> None: ...

    def unload(self, model_name: str | None = None) -> None:
        """One model, or every model when None."""
        ...

    def resident(self) -> list[str]:
        """The models loaded now."""
        ...

    def vram_mb(self, model_name: str) -> int:
        """Lease size for the model's weights and working memory."""
        ...
