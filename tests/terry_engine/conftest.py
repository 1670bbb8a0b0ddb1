"""Tiny random MelodyFlow (published file layout) + tiny 768-d T5 in a temp LOCAL_MODELS_DIR, and one CPU engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from garycommon.settings import Settings

from terry.melodyflow import MelodyFlowEngine
from terry.melodyflow.demo import REPO_ID, install_demo


@pytest.fixture(scope="package", autouse=True)
def _one_thread() -> Iterator[None]:
    """The tiny model is all small ops: one intra-op thread avoids OpenMP spin contention on a busy 2-core runner."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mf_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings(local_models_dir=tmp_path_factory.mktemp("mf_models"), device="cpu")
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
