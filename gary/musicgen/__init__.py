"""gary's MusicGen engine: audiocraft checkpoints, our own inference (CPU reference path + CUDA fast path)."""

from .engine import MusicGenEngine
from .types import GenerationRequest, GenerationResult

__all__ = ["GenerationRequest", "GenerationResult", "MusicGenEngine"]
