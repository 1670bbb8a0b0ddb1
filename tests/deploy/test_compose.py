"""The compose files against the Compose schemas, vendored in tests/deploy/schemas/:

- compose-spec.json: the current Compose Specification schema (what Compose v2 validates with), from
  github.com/compose-spec/compose-spec, schema/compose-spec.json at commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6.
- docker-compose-1.29.2.json: compose/config/compose_spec.json from the docker-compose 1.29.2 wheel on PyPI (the last
  v1 release, the schema `pip install docker-compose` validates with). It has no top-level `name`, so neither do we.
Both are Apache-2.0 (see their repositories). Variables are interpolated first, as Compose does.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = Path(__file__).resolve().parent / "schemas"
FILES = ("docker-compose.yml", "docker-compose.worker.yml")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}")


def _load(path: str) -> object:
    """The file as Compose reads it: YAML (merge keys resolved), then ${VAR...} interpolated in every string (a sample
    value for each variable)."""

    def interpolate(node: object) -> object:
        if isinstance(node, dict):
            return {k: interpolate(v) for k, v in node.items()}
        if isinstance(node, list):
            return [interpolate(v) for v in node]
        if isinstance(node, str):
            return _VAR.sub(lambda m: os.environ.get(m[1], "10.0.0.1" if m[1].endswith("HOST") else "x"), node)
        return node

    return interpolate(yaml.safe_load((ROOT / path).read_text()))


def _validator(name: str) -> jsonschema.protocols.Validator:
    """Each schema with the draft its tool uses: Compose v2 draft-07, docker-compose 1.29 Draft4Validator."""
    schema = json.loads((SCHEMAS / name).read_text())
    cls = jsonschema.Draft4Validator if name.startswith("docker-compose-1") else jsonschema.Draft7Validator
    cls.check_schema(schema)
    return cls(schema)


@pytest.mark.parametrize("schema", ["compose-spec.json", "docker-compose-1.29.2.json"])
@pytest.mark.parametrize("path", FILES)
def test_compose_file_is_valid(path: str, schema: str) -> None:
    errors = sorted(_validator(schema).iter_errors(_load(path)), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_v1_schema_rejects_what_v1_rejects() -> None:
    """The check has teeth: a top-level `name:` (accepted by v2) fails the v1 schema."""
    compose = {**_load("docker-compose.yml"), "name": "gary-backend"}  # type: ignore[dict-item]
    assert not list(_validator("compose-spec.json").iter_errors(compose))
    assert list(_validator("docker-compose-1.29.2.json").iter_errors(compose))


def test_gpu_services_keep_health_checks_cache_volume_and_share_one_environment() -> None:
    services = _load("docker-compose.yml")["services"]  # type: ignore[index]
    for name in ("gary", "jerry", "terry"):
        svc = services[name]
        assert "hf-cache:/cache/huggingface" in svc["volumes"], name
        assert svc["environment"]["HF_HOME"] == "/cache/huggingface"
        assert svc["healthcheck"]["test"][0] == "CMD"
        assert svc["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert {"prometheus", "grafana"} <= set(services)
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], "monitoring must not start by default"
    worker = _load("docker-compose.worker.yml")["services"]  # type: ignore[index]
    assert set(worker) == {"gary", "jerry", "terry"}, "a worker host runs only the GPU services"
    assert worker["gary"]["environment"]["REDIS_URL"].startswith("redis://10.0.0.1:")
