"""The MusicGen fine-tunes gary offers (`/api/models`), their grouping, default descriptions and the allow-list.

The list and the grouping rule are part of the gary4juce contract: the plugin builds its model menu from them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from garycommon.hub import check_allowed
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
