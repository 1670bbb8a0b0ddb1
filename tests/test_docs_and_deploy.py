"""Docs and deployment files stay in sync with the code: README's settings table, compose's Dockerfiles and ports."""

from __future__ import annotations

from pathlib import Path

import yaml

from garycommon.settings import Settings, markdown_table

ROOT = Path(__file__).resolve().parents[1]


def _block(text: str, name: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def test_readme_settings_table_matches_code() -> None:
    readme = (ROOT / "README.md").read_text()
    assert _block(readme, "settings-table") == markdown_table(), (
        "regenerate: python -c 'from garycommon.settings import markdown_table; print(markdown_table())'"
    )


def test_readme_has_exactly_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up on a fresh Linux machine", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0].strip() for b in setup.split("```bash")[1:]]
    assert len(blocks) == 2
    assert "gary-stack up" in blocks[0]
    assert blocks[1] == "bash tests/run.sh"
    assert "tests/run.sh" in (ROOT / ".ci" / "run").read_text()


def test_compose_services_build_and_expose_the_documented_ports() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"gary", "jerry", "terry", "queue", "redis", "mongo", "prometheus", "grafana"}
    ports = {"gary": "8000:8000", "jerry": "8005:8005", "terry": "8002:8002", "queue": "8085:8085"}
    for name, svc in services.items():
        if "build" not in svc:  # the monitoring profile's published images
            continue
        dockerfile = ROOT / svc["build"].get("context", ".") / svc["build"]["dockerfile"]
        assert dockerfile.exists(), f"{name}: {dockerfile} is missing"
        if name in ports:
            assert ports[name] in svc["ports"]
            env = svc["environment"]
            unknown = {k.lower() for k in env} - set(Settings.model_fields)
            assert not unknown, f"{name}: env vars no setting reads: {unknown}"
