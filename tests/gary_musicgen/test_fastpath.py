"""The CUDA fast path's decode step, checked on the CPU: the fused step (indexed cache writes, position-bounded
attention, the step split into the parts torch.compile compiles) gives the eager loop's tokens exactly, traced by
Dynamo too; and the split-KV attention kernel (run by Triton's interpreter) computes the masked attention."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from gary.musicgen import GenerationRequest, MusicGenEngine
from gary.musicgen.fastpath import FastDecoder
from gary.musicgen.generate import generate_eager, prepare, revert_sequence
from garycommon.settings import Settings

MONO = "testowner/tiny-mono"  # written by conftest.models_dir


@pytest.fixture(scope="module")
def engine(settings: Settings) -> MusicGenEngine:
    return MusicGenEngine(settings, torch.device("cpu"), max_resident=1)


def _jobs(engine: MusicGenEngine) -> list:
    model = engine.model(MONO)
    gen = torch.Generator().manual_seed(5)
    reqs = [
        GenerationRequest(MONO, 0.3 * torch.randn(1, 22400, generator=gen), 32000, duration=1.0, seed=1,
                          description="a much longer description of some epic orchestral film music"),
        GenerationRequest(MONO, 0.3 * torch.randn(2, 12800, generator=gen), 32000, duration=1.2, seed=7,
                          description="lofi drums", top_k=40),
        GenerationRequest(MONO, None, 32000, duration=0.8, seed=9, top_p=0.9, temperature=0.7),
    ]
    return [model.to_job(r)[0] for r in reqs]


def _fused_tokens(decoder: FastDecoder, jobs: list) -> list[torch.Tensor]:
    model = decoder.model
    state, steps, _ = prepare(model.lm, jobs, model.dtype, model.keys)
    with torch.no_grad():
        for _ in range(steps):
            decoder.step(state)
    return [revert_sequence(state.seq[b], list(model.lm.cfg.delays), j.frames) for b, j in enumerate(jobs)]


@pytest.mark.parametrize(("backend", "scope"), [(None, "layer"), ("aot_eager", "layer"), ("aot_eager", "step")])
def test_fused_step_gives_the_eager_tokens(engine: MusicGenEngine, backend: str | None, scope: str) -> None:
    model = engine.model(MONO)
    jobs = _jobs(engine)
    eager = generate_eager(model.lm, jobs, torch.float32, model.keys)
    decoder = FastDecoder(model, compile=backend is not None, backend=backend or "inductor", scope=scope)
    fused = _fused_tokens(decoder, jobs)
    assert [t.shape for t in fused] == [t.shape for t in eager]
    for a, b in zip(fused, eager, strict=True):
        assert torch.equal(a, b)


def test_fused_step_reads_no_cache_slot_past_a_rows_position(engine: MusicGenEngine) -> None:
    """Slots beyond each row's position hold whatever an earlier generation left: poisoning them changes nothing."""
    model = engine.model(MONO)
    jobs = _jobs(engine)
    eager = generate_eager(model.lm, jobs, torch.float32, model.keys)
    decoder = FastDecoder(model, compile=False)
    stale, steps, _ = prepare(model.lm, jobs, model.dtype, model.keys)
    for layer in stale.cache:
        layer.k.fill_(1e4)
        layer.v.normal_()
    state, steps, _ = prepare(model.lm, jobs, model.dtype, model.keys, cache=stale.cache)
    with torch.no_grad():
        for _ in range(steps):
            decoder.step(state)
    for b, job in enumerate(jobs):
        assert torch.equal(revert_sequence(state.seq[b], list(model.lm.cfg.delays), job.frames), eager[b])


KERNEL_CHECK = textwrap.dedent("""
    import torch
    from gary.musicgen.decode_attn import reference_attention, triton_attention
    torch.manual_seed(0)
    for rows, heads, slots, dh, dtype, tol in [(2, 3, 150, 8, torch.float32, 1e-6), (3, 2, 64, 16, torch.float32, 1e-6),
                                               (2, 2, 130, 12, torch.float32, 1e-6), (4, 2, 70, 8, torch.float16, 2e-3)]:
        q = torch.randn(rows, heads, 3, dh, dtype=dtype)[:, :, 1]  # strided, like the step's q
        k = torch.randn(rows, heads, slots, dh, dtype=dtype)
        v = torch.randn(rows, heads, slots, dh, dtype=dtype)
        pos = torch.randint(0, slots, (rows,))
        pos[0], pos[-1] = slots - 1, 0
        want = reference_attention(q.float(), k.float(), v.float(), pos)
        for r in range(rows):  # poison what no row may read
            k[r, :, pos[r] + 1:] = float("nan")
            v[r, :, pos[r] + 1:] = float("nan")
        got = triton_attention(q, k, v, pos)
        assert got.dtype == dtype and torch.isfinite(got).all()
        err = ((got.float() - want).norm() / want.norm()).item()
        assert err < tol, (rows, heads, slots, dh, dtype, err)
    print("ok")
""")


def test_decode_attention_kernel_matches_masked_sdpa() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_tokens_so_far_are_prefixes_of_the_final_codes(engine: MusicGenEngine) -> None:
    model = engine.model(MONO)
    jobs = _jobs(engine)
    handed: list[tuple[list[torch.Tensor], int]] = []
    final = generate_eager(model.lm, jobs, torch.float32, model.keys, tokens_so_far=lambda c, n: handed.append((c, n)),
                           every=7)
    counts = [n for _, n in handed]
    assert len(counts) >= 3 and counts == sorted(counts)
    assert all(b - a == 7 for a, b in zip(counts, counts[1:], strict=False) if b < min(j.frames for j in jobs))
    for codes, frames in handed:
        assert len(codes) == len(jobs)
        for c, f in zip(codes, final, strict=True):
            assert c.shape == (f.shape[0], frames) and torch.equal(c, f[:, :frames])
    # the hook fires as soon as `every` whole new frames are complete in every codebook of every row
    shortest = min(j.prompt.shape[-1] for j in jobs)
    assert counts[0] == shortest + 7


def test_warmup_requests_run_through_the_fused_step(engine: MusicGenEngine) -> None:
    """The dummy requests `FastDecoder.warmup` compiles and captures with (on CUDA, at model load) are valid jobs."""
    model = engine.model(MONO)
    decoder = FastDecoder(model, compile=False)
    for batch in (1, 2):
        jobs = decoder.warmup_jobs(batch)
        fused = _fused_tokens(decoder, jobs)
        eager = generate_eager(model.lm, jobs, torch.float32, model.keys)
        assert [t.shape[-1] for t in fused] == [4] * batch
        assert all(torch.equal(a, b) for a, b in zip(fused, eager, strict=True))
