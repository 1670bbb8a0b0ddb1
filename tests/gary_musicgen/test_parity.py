"""Parity with audiocraft 1.3.0 on tiny random checkpoints in the published layout, loaded by both libraries."""

from __future__ import annotations

import pytest
import torch

from gary.musicgen import GenerationRequest, MusicGenEngine
from gary.musicgen.conditioning import batch_conditions
from gary.musicgen.generate import generate_eager
from tests.gary_musicgen.reference import ReferenceEngine, reference_generate

MONO = "testowner/tiny-mono"  # written by conftest.models_dir
STEREO = "testowner/tiny-stereo"
SHORT_WINDOW = "testowner/tiny-19s"

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def engine(settings) -> MusicGenEngine:  # noqa: ANN001
    return MusicGenEngine(settings, torch.device("cpu"), max_resident=2)


def _wav(channels: int, seconds: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(1, channels, int(seconds * 32000), generator=gen)


@pytest.mark.parametrize("name", [MONO, STEREO])
def test_encodec_encode_decode_match(engine, reference, name) -> None:  # noqa: ANN001
    ours, ref = engine.model(name), reference(name)
    wav = _wav(ours.channels, 0.77, seed=1)  # not a whole number of frames: exercises the padding rules
    with torch.no_grad():
        ref_codes, scale = ref.compression_model.encode(wav)
        codes = ours.codec.encode(wav)
        assert scale is None
        assert torch.equal(codes, ref_codes)
        ref_audio = ref.compression_model.decode(ref_codes)
        audio = ours.codec.decode(ref_codes)
    assert audio.shape == ref_audio.shape
    assert (audio - ref_audio).abs().max().item() < 1e-4


def _ref_condition_tensors(ref_lm, descriptions: list[str | None]):  # noqa: ANN001, ANN202
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout, ConditioningAttributes

    attrs = [ConditioningAttributes(text={"description": d}) for d in descriptions]
    null = ClassifierFreeGuidanceDropout(p=1.0)(attrs)
    provider = ref_lm.condition_provider
    return provider(provider.tokenize(attrs + null))


@pytest.mark.parametrize("description", [None, "warm lofi piano with vinyl crackle and soft drums"])
@pytest.mark.parametrize("name", [MONO, STEREO])
def test_lm_logits_teacher_forcing_match(engine, reference, name, description) -> None:  # noqa: ANN001
    ours, ref = engine.model(name), reference(name)
    k = ours.lm.cfg.n_q
    codes = torch.randint(0, 2048, (2, k, 24), generator=torch.Generator().manual_seed(5))
    seq, _, _ = ref.lm.pattern_provider.get_pattern(24).build_pattern_sequence(codes, ref.lm.special_token_id)
    both = torch.cat([seq, seq])
    with torch.no_grad():
        ref_logits = ref.lm(both, conditions=[], condition_tensors=_ref_condition_tensors(ref.lm, [description] * 2))
        cond, mask = batch_conditions([ours.text.encode(description)] * 2, double=True)
        cache = ours.lm.new_cache(4, both.shape[-1], torch.float32, torch.device("cpu"))
        logits = ours.lm(both, cache, ours.lm.cross_kv(cond, mask))
    assert logits.shape == ref_logits.shape
    assert (logits - ref_logits).abs().max().item() < 1e-4
    # classifier-free guidance as LMModel._sample_next_token combines it
    ref_c, ref_u = ref_logits.split(2)
    c, u = logits.split(2)
    assert ((u + (c - u) * 3.0) - (ref_u + (ref_c - ref_u) * 3.0)).abs().max().item() < 1e-3


def test_kv_cache_steps_match_full_forward(engine) -> None:  # noqa: ANN001
    lm = engine.model(MONO).lm
    seq = torch.randint(0, 2049, (2, 4, 16), generator=torch.Generator().manual_seed(2))
    cond = torch.randn(2, 3, lm.cfg.dim)
    with torch.no_grad():
        full = lm(seq, lm.new_cache(2, 16, torch.float32, torch.device("cpu")), lm.cross_kv(cond, None))
        cache = lm.new_cache(2, 20, torch.float32, torch.device("cpu"))
        cross = lm.cross_kv(cond, None)
        lm.prefill(seq[:, :, :5], cache, cross)
        for p in range(5, 16):
            step = lm.step(seq[:, :, p], torch.full((2,), p), cache, cross)
            assert (step - full[:, :, p]).abs().max().item() < 1e-4


@pytest.mark.parametrize(
    ("name", "description", "prompt_s"),
    [(MONO, "dark techno with a rolling bassline", 1.0), (MONO, None, 0.5), (STEREO, "bright pop", 0.6),
     (MONO, "ambient pads", None)],
)
def test_greedy_generation_matches_audiocraft(engine, reference, name, description, prompt_s) -> None:  # noqa: ANN001
    ours, ref = engine.model(name), reference(name)
    prompt = _wav(ours.channels, prompt_s, seed=7) if prompt_s else None
    ref_audio, ref_tokens = reference_generate(
        ref, prompt, 32000, [description], duration=2.0, top_k=1, top_p=0.0, temperature=1.0, cfg_coef=3.0, seed=0,
        return_tokens=True)
    req = GenerationRequest(name, prompt[0] if prompt is not None else None, 32000, duration=2.0,
                            description=description, top_k=1, seed=123)
    job, _ = ours.to_job(req)
    codes = generate_eager(ours.lm, [job], torch.float32, ours.keys)[0]
    assert torch.equal(codes, ref_tokens[0])
    result = engine.generate([req])[0]
    assert result.audio.shape == ref_audio[0].shape
    assert result.sample_rate == ref.sample_rate
    assert (result.audio - ref_audio[0]).abs().max().item() < 1e-4


def test_audiocraft_backend_through_the_engine_matches_native(settings) -> None:  # noqa: ANN001
    """audiocraft behind our engine's interface (ReferenceEngine) and our engine agree on greedy decoding, so
    side-by-side benchmarks compare the same computation."""
    prompt = _wav(1, 0.5, seed=9)[0]
    req = GenerationRequest(MONO, prompt, 32000, duration=1.2, description="tape-saturated breakbeat", top_k=1, seed=4)
    ref = ReferenceEngine(settings, torch.device("cpu")).generate([req])[0]
    native = MusicGenEngine(settings, torch.device("cpu")).generate([req])[0]
    assert ref.seed == native.seed == 4 and ref.sample_rate == native.sample_rate == 32000
    assert ref.audio.shape == native.audio.shape == (1, 38400)
    assert (ref.audio - native.audio).abs().max().item() < 1e-4


@pytest.mark.parametrize(("prompt_s", "duration"), [(0.5, 24.0), (None, 20.0)])
def test_long_generation_extends_like_audiocraft(engine, reference, prompt_s, duration) -> None:  # noqa: ANN001
    """Past the model's window (19 s here, 30 s for the published models) audiocraft continues window by window with
    an 18/30 stride; greedy tokens and output length must match its extension exactly."""
    ours, ref = engine.model(SHORT_WINDOW), reference(SHORT_WINDOW)
    prompt = _wav(1, prompt_s, seed=3) if prompt_s else None
    ref_audio, ref_tokens = reference_generate(
        ref, prompt, 32000, ["slow dub techno"], duration=duration, top_k=1, top_p=0.0, temperature=1.0,
        cfg_coef=3.0, seed=0, return_tokens=True, extend_stride=0.6 * 19.0)
    seen: list[tuple[int, int]] = []
    req = GenerationRequest(SHORT_WINDOW, prompt[0] if prompt is not None else None, 32000, duration=duration,
                            description="slow dub techno", top_k=1, seed=1)
    job, _ = ours.to_job(req)
    codes = ours._extend(job, duration, lambda s, t: seen.append((s, t)))
    assert torch.equal(codes, ref_tokens[0])
    out = engine.generate([req])[0]
    assert out.audio.shape == ref_audio[0].shape == (1, int(duration * 50) * 640)
    steps = [s for s, _ in seen]
    assert steps == sorted(steps) and seen[-1][0] == seen[-1][1]
