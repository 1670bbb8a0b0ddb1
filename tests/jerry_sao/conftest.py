"""Shared fixtures: a tiny 768-d T5 in LOCAL_MODELS_DIR, a small SAO config, its random weights and both engines."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from garycommon.settings import Settings
from garycommon.textenc import write_tiny_t5
from jerry.sao import SAOEngine
from jerry.sao.demo import random_state_dict, tiny_config, write_demo_checkpoint

sys.path.insert(0, str(Path(__file__).parent))

SAMPLE_SIZE = 2048 * 16  # 16 latent frames: same architecture as SAO-small, quick on a CPU


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_tiny_t5(root / "t5-base")
    return root


@pytest.fixture(scope="session")
def settings(models_dir: Path) -> Settings:
    # fp32 on every CPU: these tests compare with stable-audio-tools (bf16: tests/garycommon/test_cpu_dtype.py)
    return Settings(local_models_dir=models_dir, device="cpu", model_allow_owners=["thepatch"], cpu_dtype="fp32")


@pytest.fixture(scope="session")
def small_config() -> dict[str, Any]:
    return tiny_config(sample_size=SAMPLE_SIZE, latent_dim=8, channels=4, embed_dim=64, depth=2, num_heads=2)


@pytest.fixture(scope="session")
def small_state(small_config: dict[str, Any]) -> dict[str, torch.Tensor]:
    return random_state_dict(small_config, seed=0)


@pytest.fixture(scope="session")
def small_dir(models_dir: Path, small_config: dict[str, Any]) -> Path:
    return write_demo_checkpoint(models_dir / "local" / "small", config=small_config, seed=0)


@pytest.fixture(scope="session")
def engine(small_dir: Path, settings: Settings) -> SAOEngine:
    return SAOEngine.load(str(small_dir), settings, torch.device("cpu"))


@pytest.fixture(scope="session")
def reference(small_config: dict[str, Any], small_state: dict[str, torch.Tensor], models_dir: Path) -> Any:
    pytest.importorskip("stable_audio_tools")
    from tests.jerry_sao.reference import build_reference

    return build_reference(small_config, small_state, models_dir / "t5-base")
