"""An autouse fixture for the tiny-model engine test folders: import it into a folder's conftest.py to run that folder
with one intra-op torch thread (tiny models are all small ops; on a busy 2-core CI runner extra OpenMP threads only
spin and contend)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
