"""Imports from a raw checkout, for the benchmark scripts: the device machine gets the repo's files but no install, so
the repo root goes on sys.path and the `common/` folder is mapped to its import name `garycommon`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def use_checkout() -> None:
    sys.path.insert(0, str(ROOT))
    if importlib.util.find_spec("garycommon") is None:
        spec = importlib.util.spec_from_file_location("garycommon", ROOT / "common" / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / "common")])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["garycommon"] = module
        spec.loader.exec_module(module)
