"""gary's MusicGen engine: audiocraft-format checkpoints, our own inference (eager loop + CUDA fast path)."""

from .engine import MusicGenEngine
from .types import GenerationRequest, GenerationResult

__all__ = ["GenerationRequest", "GenerationResult", "MusicGenEngine"]
