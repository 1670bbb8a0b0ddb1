"""One `gary-stack up --demo` (gateway mode) for every flow module: starting three torch services takes a while on
2 cores, and the flows must also prove the stack keeps working across many sessions and jobs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.flows.stack_harness import Stack, running_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running
