"""Fixtures for the MusicGen engine tests: tiny audiocraft-layout checkpoints written once per session, loaded by our
engine and (for parity) by audiocraft 1.3.0 itself. audiocraft imports `xformers.ops` at import time; where no usable
xformers wheel exists, tests.gary_musicgen.reference registers a minimal stand-in (see its docstring)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gary.musicgen.demo import compression_xp_cfg, lm_xp_cfg, save_checkpoint, write_demo_checkpoint
from garycommon.settings import Settings
from garycommon.textenc import write_tiny_t5
from tests.torch_threads import one_torch_thread  # noqa: F401 - autouse: this folder runs on one torch thread

MONO = "testowner/tiny-mono"
STEREO = "testowner/tiny-stereo"
SHORT_WINDOW = "testowner/tiny-19s"  # a 19 s window (audiocraft needs > 18 s) with one layer: cheap long runs


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("musicgen-models")
    write_tiny_t5(root / "t5-base")
    write_demo_checkpoint(root / MONO, size="small", seed=3)
    write_demo_checkpoint(root / STEREO, size="small", stereo=True, seed=4)
    save_checkpoint(root / SHORT_WINDOW, lm_xp_cfg(dim=16, num_heads=2, num_layers=1, segment_duration=19.0),
                    compression_xp_cfg(), seed=5)
    return root


@pytest.fixture(scope="session")
def settings(models_dir: Path) -> Settings:
    # fp32 on every CPU: these tests compare with audiocraft and the fp32 eager path (bf16: tests/garycommon)
    return Settings(local_models_dir=models_dir, model_allow_owners=["testowner"], device="cpu", cpu_dtype="fp32")


@pytest.fixture(scope="session")
def reference(models_dir: Path, settings: Settings):  # noqa: ANN201 - audiocraft types
    """audiocraft's MusicGen for each tiny checkpoint (loaded lazily, once)."""
    from tests.gary_musicgen.reference import load_reference

    cache: dict[str, object] = {}

    def get(name: str):  # noqa: ANN202
        if name not in cache:
            cache[name] = load_reference(models_dir / name, settings, "cpu")
        return cache[name]

    return get
