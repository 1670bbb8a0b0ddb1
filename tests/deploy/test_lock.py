"""The locks are what the resolver makes of today's inputs, and install from wheels alone on Python 3.11-3.13.

Both tests ask uv (the lock's resolver, a test dependency) about PyPI's metadata, which CI reaches. Re-compiling with
the committed lock as the output file makes uv keep every pin that is still valid, so the result differs only when an
input changed (pyproject.toml, constraints.txt, queue/requirements.txt) without the lock being re-compiled.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQ = ROOT / "requirements"


def _uv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "uv", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def _pins(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"^[A-Za-z0-9]", line)]


@pytest.mark.parametrize(("lock", "inputs"), [
    ("runtime.lock.txt", ["pyproject.toml", "-c", "requirements/constraints.txt"]),
    ("queue.lock.txt", ["queue/requirements.txt", "-c", "requirements/runtime.lock.txt"]),
])
def test_lock_is_up_to_date_with_its_inputs(lock: str, inputs: list[str], tmp_path: Path) -> None:
    out = tmp_path / lock
    shutil.copy(REQ / lock, out)
    done = _uv("pip", "compile", *inputs, "--universal", "--python-version", "3.11", "-q", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert _pins(out.read_text()) == _pins((REQ / lock).read_text()), (
        f"requirements/{lock} is stale: re-compile it (requirements/README.md)")


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
def test_runtime_lock_installs_from_wheels_alone(python: str, tmp_path: Path) -> None:
    """No C toolchain needed: every locked package has a Linux x86_64 wheel for this Python (antlr4-python3-runtime
    is a pure-Python sdist that builds with setuptools alone)."""
    lock = tmp_path / "wheels-only.txt"
    lock.write_text("\n".join(p for p in _pins((REQ / "runtime.lock.txt").read_text()) if not p.startswith("antlr4")))
    done = _uv("pip", "compile", str(lock), "--no-deps", "--only-binary", ":all:", "--python-version", python,
               "--python-platform", "x86_64-manylinux_2_28", "-q", "-o", str(tmp_path / "out.txt"))
    assert done.returncode == 0, done.stderr
