"""Tiny random MelodyFlow (published file layout) + tiny 768-d T5 in a temp LOCAL_MODELS_DIR, and one CPU engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from garycommon.settings import Settings
from terry.melodyflow import MelodyFlowEngine
from terry.melodyflow.demo import REPO_ID, install_demo
from tests.torch_threads import one_torch_thread  # noqa: F401 - autouse: this folder runs on one torch thread


@pytest.fixture(scope="session")
def mf_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # fp32 on every CPU: these tests compare with the fork's math (bf16: tests/garycommon/test_cpu_dtype.py)
    settings = Settings(local_models_dir=tmp_path_factory.mktemp("mf_models"), device="cpu", cpu_dtype="fp32")
    install_demo(settings)
    return settings


@pytest.fixture(scope="session")
def mf_engine(mf_settings: Settings) -> MelodyFlowEngine:
    return MelodyFlowEngine.load(REPO_ID, mf_settings, torch.device("cpu"))


@pytest.fixture(scope="session")
def mf_folder(mf_settings: Settings) -> Path:
    assert mf_settings.local_models_dir is not None
    return mf_settings.local_models_dir / REPO_ID


def noise(seconds: float, sample_rate: int = 48000, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, int(seconds * sample_rate), generator=gen) * 0.1
