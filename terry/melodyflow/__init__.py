"""MelodyFlow (text-guided music editing by flow inversion), re-implemented in plain torch for terry."""

from .engine import MelodyFlowEngine

__all__ = ["MelodyFlowEngine"]
