"""The fine-tunes gary's clients pick from (`GET /api/models`), grouped by the MusicGen size they were trained from."""

from __future__ import annotations

MODEL_CATALOGUE: dict[str, list[str]] = {
    "small": [
        "thepatch/vanya_ai_dnb_0.1", "thepatch/gary_orchestra_2", "thepatch/keygen-gary-v2-small-8",
        "thepatch/keygen-gary-v2-small-12", "thepatch/keygen-gary-small-6", "thepatch/keygen-gary-small-12",
        "thepatch/keygen-gary-small-20",
    ],
    "medium": ["thepatch/bleeps-medium", "thepatch/keygen-gary-medium-12"],
    "large": [
        "thepatch/hoenn_lofi", "thepatch/bleeps-large-6", "thepatch/bleeps-large-8", "thepatch/bleeps-large-10",
        "thepatch/bleeps-large-14", "thepatch/bleeps-large-20", "thepatch/keygen-gary-large-6",
        "thepatch/keygen-gary-large-12", "thepatch/keygen-gary-large-20", "thepatch/keygen-gary-v2-large-12",
        "thepatch/keygen-gary-v2-large-16",
    ],
}

# LM parameter counts of the published sizes (fp16 bytes = 2x), used for lease estimates before a model is loaded.
SIZE_PARAMS: dict[str, int] = {"small": 420_000_000, "medium": 1_500_000_000, "large": 3_300_000_000}


def size_of(name: str) -> str:
    """Catalogue group of a model name; unknown names are guessed from the name, else assumed large (safe side)."""
    for size, names in MODEL_CATALOGUE.items():
        if name in names:
            return size
    lowered = name.lower()
    for size in ("small", "medium", "large"):
        if size in lowered:
            return size
    return "large"
