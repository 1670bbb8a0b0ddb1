"""Imports from a raw checkout, for the benchmark scripts: the device machine gets the repo's files but no install, so
the repo root goes on sys.path and every package folder is named as it imports."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def use_checkout() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    sys.path.insert(1, str(ROOT / "queue"))  # gpuqueue lives under queue/
