"""The MusicGen fine-tunes gary offers (`/api/models`), their grouping, default descriptions and the allow-list.

The list and the grouping rule are part of the gary4juce contract: the plugin builds its model menu from them. This is
gary's only model list: the engine is handed what it may load (`AllowedModels`), demo mode included, and knows no names.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from garycommon.hub import check_allowed, resolve_model_dir
from garycommon.settings import Settings

SMALL: tuple[str, ...] = (
    "thepatch/vanya_ai_dnb_0.1",
    "thepatch/gary_orchestra_2",
    "thepatch/keygen-gary-v2-small-8",
    "thepatch/keygen-gary-v2-small-12",
    "thepatch/keygen-gary-small-6",
    "thepatch/keygen-gary-small-12",
    "thepatch/keygen-gary-small-20",
)
MEDIUM: tuple[str, ...] = ("thepatch/bleeps-medium", "thepatch/keygen-gary-medium-12")
LARGE: tuple[str, ...] = (
    "thepatch/hoenn_lofi",
    "thepatch/bleeps-large-6",
    "thepatch/bleeps-large-8",
    "thepatch/bleeps-large-10",
    "thepatch/bleeps-large-14",
    "thepatch/bleeps-large-20",
    "thepatch/keygen-gary-large-6",
    "thepatch/keygen-gary-large-12",
    "thepatch/keygen-gary-large-20",
    "thepatch/keygen-gary-v2-large-12",
    "thepatch/keygen-gary-v2-large-16",
)
BY_SIZE: dict[str, tuple[str, ...]] = {"small": SMALL, "medium": MEDIUM, "large": LARGE}
ALL_MODELS: tuple[str, ...] = SMALL + MEDIUM + LARGE

# Used when a session is created from audio alone (continue/crop without a session), as the original did.
DEFAULT_MODEL = "thepatch/vanya_ai_dnb_0.1"
DEFAULT_PROMPT_DURATION = 6
# The models `/api/warmup` preloads (the original's pair).
WARMUP_MODELS: tuple[str, ...] = ("thepatch/hoenn_lofi", "thepatch/bleeps-medium")

_ORCHESTRA = "violin, epic, film, piano, strings, orchestra"
_DEFAULT_DESCRIPTIONS: dict[str, str] = {
    "thepatch/gary_orchestra": _ORCHESTRA,
    "thepatch/gary_orchestra_2": _ORCHESTRA,
}

_EPOCH_SUFFIX = re.compile(r"^(?P<base>.+)-(?P<epoch>\d+)$")


def all_model_names() -> list[str]:
    """Every catalogue repo, in `/api/models` order (demo mode writes a stand-in for each)."""
    return list(ALL_MODELS)


def size_of(name: str) -> str:
    """MusicGen size a model was fine-tuned from: its catalogue group, else guessed from the name, else large (the
    safe side for VRAM estimates)."""
    for size, names in BY_SIZE.items():
        if name in names:
            return size
    lowered = name.lower()
    for size in BY_SIZE:
        if size in lowered:
            return size
    return "large"


def default_description(model_name: str) -> str | None:
    """Text conditioning a model was fine-tuned with, used when the client sends none (empty counts as none)."""
    return _DEFAULT_DESCRIPTIONS.get(model_name)


def group_models(paths: tuple[str, ...]) -> list[dict[str, Any]]:
    """`owner/base-<n>` repos become one group of checkpoints sorted by n; others are singles; first-appearance order."""
    entries: list[dict[str, Any]] = []
    groups: dict[str, dict[str, Any]] = {}
    for path in paths:
        name = path.split("/", 1)[1]
        match = _EPOCH_SUFFIX.match(name)
        if match is None:
            entries.append({"name": name, "path": path, "type": "single"})
            continue
        base = match["base"]
        group = groups.get(base)
        if group is None:
            group = {"name": base, "type": "group", "checkpoints": []}
            groups[base] = group
            entries.append(group)
        group["checkpoints"].append({"name": name, "path": path, "epoch": int(match["epoch"])})
    for group in groups.values():
        group["checkpoints"].sort(key=lambda c: c["epoch"])
    return entries


def models_response() -> dict[str, Any]:
    return {
        "success": True,
        "models": {size: group_models(paths) for size, paths in BY_SIZE.items()},
        "updated_at": datetime.now(UTC).isoformat(),
    }


def check_model(name: str, settings: Settings) -> str:
    """Catalogue repos and repos of MODEL_ALLOW_OWNERS only: nothing else is ever downloaded (raises MODEL_NOT_ALLOWED)."""
    check_allowed(name, settings, extra_allowed=ALL_MODELS)
    return name


class AllowedModels:
    """What gary's MusicGen engine may load, as the source it loads from (gary.musicgen.types.ModelSource).

    Operator-given folders; catalogue repos and MODEL_ALLOW_OWNERS repos (`check_model`), nothing else is ever
    downloaded; in demo mode (DEMO_MODELS) a tiny random stand-in of each allowed repo, written on first use (with the
    tiny T5 its config names) under LOCAL_MODELS_DIR, else DATA_DIR/demo-models (gary.musicgen.demo.demo_root).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def checkpoint(self, name: str) -> Path:
        from .musicgen.checkpoint import COMPRESSION_FILE, LM_FILE

        if Path(name).is_dir():  # an operator-given local folder is always allowed
            return resolve_model_dir(name, [LM_FILE, COMPRESSION_FILE], self.settings)
        check_model(name, self.settings)  # also keeps demo-mode names to safe owner/name ids
        if self.settings.demo_models:
            from .musicgen.demo import install_demo

            return Path(install_demo(self.settings, [name])[0])
        return resolve_model_dir(name, [LM_FILE, COMPRESSION_FILE], self.settings)

    def text_encoder(self, name: str) -> str:
        if self.settings.demo_models:  # the demo T5 sits beside the demo checkpoints
            from .musicgen.demo import demo_root

            if (demo_root(self.settings) / name).is_dir():
                return str(demo_root(self.settings) / name)
        return name

    def size(self, name: str) -> str:
        return size_of(name)
