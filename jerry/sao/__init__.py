"""jerry.sao: our own stable-audio-open-small inference engine (plain torch; CUDA graphs on GPU)."""

from .engine import DEFAULT_MODEL, SAOEngine, SAORequest, SAOResult

__all__ = ["DEFAULT_MODEL", "SAOEngine", "SAORequest", "SAOResult"]
