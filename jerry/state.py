"""The objects one jerry process shares between its routes (kept on `app.state.jerry`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from garycommon.settings import Settings

from .batcher import Batcher
from .generation import Generator
from .models import ModelRegistry
from .riffs import RiffLibrary


@dataclass
class JerryState:
    settings: Settings
    batcher: Batcher
    registry: ModelRegistry
    riffs: RiffLibrary
    generator: Generator
    lease: dict[str, object] = field(default_factory=lambda: {"state": "off"})


def get_state(request: Request) -> JerryState:
    return request.app.state.jerry
