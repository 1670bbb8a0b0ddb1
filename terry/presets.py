"""The named transform styles ("variations") clients pick from.

The 33 names are part of the compatibility contract (gary4live, gary4juce and gary send them verbatim); the prompt
text is ours. Each prompt is a plain description of the target sound, which is what the T5-conditioned flow model
was trained on. Any name, including `custom`, is accepted when the request carries its own `custom_prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass

from garycommon.errors import ErrorCode, GaryError

CUSTOM = "custom"
DEFAULT_FLOWSTEP = 0.12
EULER_STEPS = 25
MIDPOINT_STEPS = 64
MAX_PROMPT_CHARS = 2000


@dataclass(frozen=True)
class Preset:
    name: str
    prompt: str
    flowstep: float = DEFAULT_FLOWSTEP
    steps: int = EULER_STEPS


def _p(name: str, prompt: str) -> Preset:
    return Preset(name=name, prompt=prompt)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # acoustic
        _p("accordion_folk", "a lively European folk tune led by a bright button accordion, warm and rustic, village dance feel"),
        _p("banjo_bluegrass", "fast bluegrass picking on a twangy five-string banjo with upright bass, sunny and acoustic"),
        _p("piano_classical", "an expressive solo grand piano piece in a romantic classical style, rich dynamics, concert hall"),
        _p("celtic", "an Irish celtic reel with a dancing fiddle and a breathy tin whistle over a light bodhran pulse"),
        _p("strings_quartet", "an intimate string quartet of two violins, viola and cello playing warm legato chamber music"),
        # synth
        _p("synth_retro", "an 80s analog synthesizer track with lush detuned pads and bubbling arpeggios, nostalgic and warm"),
        _p("synth_modern", "a polished modern digital synth production with crisp arpeggiators and a robotic vocoder lead"),
        _p("synth_ambient", "slow evolving ambient synth pads drenched in long reverb, spacious, calm and dreamy"),
        _p("synth_edm", "a festival EDM drop with big supersaw leads, pumping sidechain compression and a driving kick"),
        # band / hybrid
        _p("rock_band", "a full rock band with overdriven electric guitars, punchy live drums and a solid bass groove"),
        _p("cinematic_epic", "an epic cinematic score mixing a full orchestra with huge hybrid percussion and brass hits"),
        _p("lofi_chill", "a mellow lo-fi hip hop beat with dusty vinyl crackle, soft jazzy piano chords and lazy drums"),
        _p("synth_bass", "a deep, fat analog synth bassline with a round low end and a squelchy filter, groovy and heavy"),
        _p("retro_rpg", "a 16-bit Japanese role-playing game soundtrack with chiptune-era strings, flutes and a heroic melody"),
        _p("steel_drums", "bright Caribbean steel pan drums playing a cheerful island melody with light percussion"),
        _p("chiptune", "8-bit chiptune music made of square and pulse waves and a noise channel, like an old NES console"),
        _p("gamelan_fusion", "Indonesian gamelan metallophones and gongs blended with modern electronic beats, shimmering"),
        _p("music_box", "a delicate wind-up music box playing a tinkling lullaby melody, sweet, small and fragile"),
        # drums
        _p("trap_808", "a hard trap beat with booming 808 bass, rapid hi-hat rolls and snappy claps"),
        _p("lo_fi_drums", "laid-back lo-fi drum loop with soft muffled kicks, crunchy snares and tape saturation"),
        _p("boom_bap", "a classic 90s boom bap hip hop drum break with a punchy kick, cracking snare and swing"),
        _p("percussion_ensemble", "a hand percussion ensemble of djembe, congas and shakers weaving interlocking polyrhythms"),
        # electronic
        _p("future_bass", "future bass with wide lush supersaw chords, wobbling vibrato and bright vocal chops"),
        _p("synthwave_retro", "retro synthwave with gated reverb drums, neon analog leads and a driving night-drive bassline"),
        _p("melodic_techno", "hypnotic melodic techno with a steady four-on-the-floor kick and emotional rolling synth lines"),
        _p("dubstep_wobble", "heavy dubstep with growling wobble bass, half-time drums and aggressive modulated synths"),
        # glitch / experimental
        _p("glitch_hop", "glitch hop with stuttering chopped beats, bit-crushed textures and a funky mid-tempo groove"),
        _p("digital_disruption", "fractured digital music full of buffer stutters, data glitches and abrupt digital artifacts"),
        _p("circuit_bent", "circuit-bent toy electronics making erratic squeaks, pitch warbles and broken lo-fi noises"),
        _p("orchestral_glitch", "orchestral strings and brass cut up with glitchy edits, stutters and digital processing"),
        _p("vapor_drums", "vaporwave drums, slowed and washed in reverb, hazy and nostalgic with a dreamy retro mood"),
        _p("industrial_textures", "dark industrial music with metallic clanks, distorted machine noise and grinding rhythms"),
        _p("jungle_breaks", "fast jungle drum and bass with chopped amen breakbeats and deep rolling sub bass"),
    )
}


def resolve_prompt(variation: str, custom_prompt: str | None) -> tuple[str, Preset | None]:
    """The text prompt for a request: its own `custom_prompt` wins; otherwise the named preset's prompt.

    A blank `custom_prompt` counts as absent (clients send `""` when the field is unused); the original used the
    empty string as the prompt, which silently produced an unconditioned result.
    """
    preset = PRESETS.get(variation)
    prompt = (custom_prompt or "").strip()
    if prompt:
        return prompt, preset
    if preset is not None:
        return preset.prompt, preset
    if variation == CUSTOM:
        raise GaryError(ErrorCode.VALIDATION_ERROR, "variation 'custom' needs a non-empty custom_prompt")
    raise GaryError(
        ErrorCode.VALIDATION_ERROR,
        f"Unknown variation: {variation} (GET /variations lists them; or send custom_prompt with any name)",
    )
