"""The package list in pyproject.toml must name every package folder, or `pip install .` (Docker) would miss it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = cfg["package-dir"]
    listed = set(cfg["packages"])
    found = set()
    for name, folder in dirs.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([name, *rel.parts]))
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_queue_folder_is_not_importable_as_queue() -> None:
    import queue

    assert hasattr(queue, "Queue"), "the stdlib queue must not be shadowed"
    import gpuqueue

    assert Path(gpuqueue.__file__).parent.parent.name == "queue"


def test_stdlib_queue_wins_from_repo_root() -> None:
    """`python -c` from the repo root puts the root first on sys.path; the stdlib must still win."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", "import queue, gpuqueue; print(queue.Queue.__module__)"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "queue"


def test_test_module_basenames_are_unique() -> None:
    """pytest imports test folders without __init__.py by basename: two test_x.py would break collection."""
    seen: dict[str, Path] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        if "node_modules" in path.parts or (path.parent / "__init__.py").exists():
            continue
        assert path.name not in seen, f"{path} and {seen[path.name]} share a basename"
        seen[path.name] = path
