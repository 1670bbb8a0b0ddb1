"""Preset names (compatibility contract) and request validation messages, without a server."""

from __future__ import annotations

import pytest

from garycommon.errors import GaryError
from terry.presets import PRESETS, resolve_prompt
from terry.schemas import parse_transform

# the original's variation names, in its order: clients send these exact strings (docs/terry-api.md).
SPEC_NAMES = [
    "accordion_folk", "banjo_bluegrass", "piano_classical", "celtic", "strings_quartet",
    "synth_retro", "synth_modern", "synth_ambient", "synth_edm",
    "rock_band", "cinematic_epic", "lofi_chill", "synth_bass", "retro_rpg", "steel_drums", "chiptune",
    "gamelan_fusion", "music_box",
    "trap_808", "lo_fi_drums", "boom_bap", "percussion_ensemble",
    "future_bass", "synthwave_retro", "melodic_techno", "dubstep_wobble",
    "glitch_hop", "digital_disruption", "circuit_bent", "orchestral_glitch", "vapor_drums", "industrial_textures",
    "jungle_breaks",
]


def test_exactly_the_33_original_names_with_distinct_prompts() -> None:
    assert list(PRESETS) == SPEC_NAMES
    assert len(SPEC_NAMES) == 33
    prompts = [p.prompt for p in PRESETS.values()]
    assert len(set(prompts)) == 33 and all(len(p) > 30 for p in prompts)
    assert all(p.flowstep == 0.12 and p.steps == 25 for p in PRESETS.values())


def test_custom_prompt_wins_and_custom_needs_one() -> None:
    assert resolve_prompt("custom", "  warm tape delay  ") == ("warm tape delay", None)
    assert resolve_prompt("anything_goes", "my own words")[0] == "my own words"
    assert resolve_prompt("celtic", "")[0] == PRESETS["celtic"].prompt  # blank = unused field, not an empty prompt
    with pytest.raises(GaryError, match="custom_prompt"):
        resolve_prompt("custom", None)
    with pytest.raises(GaryError, match="Unknown variation: nope"):
        resolve_prompt("nope", "   ")


def _msg(body: object) -> str:
    with pytest.raises(GaryError) as info:
        parse_transform(body)
    assert info.value.http_status == 400
    return info.value.message


@pytest.mark.parametrize("flowstep", [0, 1, -0.1, 1.5, "abc", float("inf")])
def test_flowstep_must_be_inside_zero_one(flowstep: object) -> None:
    assert _msg({"variation": "celtic", "audio": "AAAA", "flowstep": flowstep}).startswith("flowstep:")


def test_request_messages_name_the_problem() -> None:
    assert "variation: Missing required data" in _msg({"audio": "AAAA"})
    assert "No audio data or file path provided" in _msg({"variation": "celtic"})
    assert "solver:" in _msg({"variation": "celtic", "audio": "AAAA", "solver": "rk4"})
    assert "session_id:" in _msg({"variation": "celtic", "audio": "AAAA", "session_id": "../../etc"})
    assert "seed:" in _msg({"variation": "celtic", "audio": "AAAA", "seed": -5})
    assert "even" in _msg({"variation": "celtic", "audio": "AAAA", "solver": "midpoint", "steps": 5})
    assert "JSON object" in _msg(["not", "an", "object"])


def test_lenient_where_the_original_was() -> None:
    req = parse_transform({"variation": "celtic", "audio": "AAAA", "flowstep": "0.1", "solver": "Midpoint",
                           "seed": -1, "flowstep_extra": 1})
    assert req.flowstep == 0.1 and req.solver == "midpoint" and req.seed is None
    assert parse_transform({"variation": "celtic", "audio": "AAAA", "flowstep": None}).flowstep is None
    assert parse_transform({"variation": "celtic", "audio_data": "AAAA"}).audio == "AAAA"  # gary's field name
