"""Prompt shaping for loop types: whole-word edits, so "drums" never turns into "s"."""

from __future__ import annotations

import re
from dataclasses import dataclass

DRUM_NEGATIVE = "melody, harmony, pitched instruments, vocals, singing"
INSTRUMENT_NEGATIVE = "drums, percussion, kick, snare, hi-hat"

_DRUM_WORD = re.compile(r"\bdrums?\b", re.IGNORECASE)
_HAS_DRUM = re.compile(r"\bdrum", re.IGNORECASE)
_SPACES = re.compile(r"\s{2,}")
_DANGLING = re.compile(r"\s+([,.;:!?])")


@dataclass(frozen=True)
class ShapedPrompt:
    prompt: str
    negative_prompt: str | None


def remove_drum_words(prompt: str) -> str:
    """Drop the whole words "drum"/"drums" (any case) and tidy the spaces they leave."""
    text = _DRUM_WORD.sub(" ", prompt)
    text = _DANGLING.sub(r"\1", _SPACES.sub(" ", text))
    return text.strip(" ,")


def _join_negative(*parts: str | None) -> str | None:
    joined = ", ".join(p.strip() for p in parts if p and p.strip())
    return joined or None


def shape_for_loop_type(prompt: str, loop_type: str, negative_prompt: str | None = None) -> ShapedPrompt:
    """`drums`: add " drum loop" unless a drum word is there, steer away from pitched parts; `instruments`: drop the
    drum words, steer away from percussion; anything else: unchanged. A client's own negative prompt is kept too."""
    kind = (loop_type or "auto").lower()
    if kind == "drums":
        shaped = prompt if _HAS_DRUM.search(prompt) else f"{prompt} drum loop"
        return ShapedPrompt(shaped, _join_negative(DRUM_NEGATIVE, negative_prompt))
    if kind == "instruments":
        shaped = remove_drum_words(prompt) or prompt
        return ShapedPrompt(shaped, _join_negative(INSTRUMENT_NEGATIVE, negative_prompt))
    return ShapedPrompt(prompt, _join_negative(negative_prompt))
