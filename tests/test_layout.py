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


def test_test_folders_are_packages_named_after_what_they_test() -> None:
    """Every test folder is a package (helpers import as `tests.<folder>.<module>`, so two folders may hold modules of
    the same name) named after a package of the product, or one of the cross-cutting suites."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {name.replace(".", "_") for name in cfg["packages"]}
    cross_cutting = {"flows", "deploy", "security", "node"}
    for folder in sorted(p for p in (ROOT / "tests").iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        if folder.name == "node":  # the node socket.io-client scripts, no Python
            continue
        assert (folder / "__init__.py").exists(), f"{folder} is not a package"
        assert folder.name in packages | cross_cutting, f"{folder.name}: name it after the package it tests"
