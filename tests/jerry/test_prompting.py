"""Loop-type prompt shaping with whole-word drum removal."""

from __future__ import annotations

import pytest

from jerry.prompting import DRUM_NEGATIVE, INSTRUMENT_NEGATIVE, remove_drum_words, shape_for_loop_type


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("techno drums 128bpm", "techno 128bpm"), ("Drum and bass 174bpm", "and bass 174bpm"),
     ("drums, bass, synth 120bpm", "bass, synth 120bpm"), ("drumline funk 100bpm", "drumline funk 100bpm"),
     ("eardrums 90bpm", "eardrums 90bpm")],
)
def test_whole_word_removal(prompt: str, expected: str) -> None:
    assert remove_drum_words(prompt) == expected


def test_the_original_bug_is_gone() -> None:
    """The original turned "drums" into "s" via replace("drum", "")."""
    shaped = shape_for_loop_type("heavy drums 140bpm", "instruments")
    assert shaped.prompt == "heavy 140bpm"
    assert " s " not in f" {shaped.prompt} "
    assert shaped.negative_prompt == INSTRUMENT_NEGATIVE


def test_drums_adds_drum_loop_only_when_missing() -> None:
    assert shape_for_loop_type("techno 128bpm", "drums").prompt == "techno 128bpm drum loop"
    assert shape_for_loop_type("techno drums 128bpm", "drums").prompt == "techno drums 128bpm"
    assert shape_for_loop_type("techno 128bpm", "drums").negative_prompt == DRUM_NEGATIVE


def test_auto_keeps_prompt_and_client_negative_is_kept() -> None:
    assert shape_for_loop_type("x 90bpm", "auto").prompt == "x 90bpm"
    assert shape_for_loop_type("x 90bpm", "auto").negative_prompt is None
    assert shape_for_loop_type("x 90bpm", "drums", "vocals").negative_prompt == f"{DRUM_NEGATIVE}, vocals"
