"""Every command line (issue 14, item 15): `--help` lists its options and the environment variables it reads with
their defaults; the gateway has no `--demo`; a bad LOG_LEVEL or SESSION_STORE is one line naming the variable and
the allowed values, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CLIS = {
    "gary-server": ("gary.cli", ["GARY_OUTPUT_SECONDS", "SESSION_STORE"], ["JERRY_MODEL", "QUEUE_GPUS"]),
    "jerry-server": ("jerry.cli", ["JERRY_MODEL"], ["GARY_OUTPUT_SECONDS", "TERRY_MODEL"]),
    "terry-server": ("terry.cli", ["TERRY_MODEL"], ["JERRY_MODEL", "QUEUE_GPUS"]),
    "gpu-queue-server": ("gpuqueue.cli", ["QUEUE_GPUS", "QUEUE_MAX_QUEUED"], ["JERRY_MODEL", "GARY_OUTPUT_SECONDS"]),
    "gary-stack": ("garystack.cli", ["QUEUE_GPUS", "JERRY_MODEL"], []),
}


def _run(module: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    code = f"import sys; from {module} import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_help_lists_options_and_environment_with_defaults(prog: str) -> None:
    module, mine, others = CLIS[prog]
    done = _run(module, "--help")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"usage: {prog}" in out and "environment variables (default):" in out
    for name in ("REDIS_URL", "LOG_LEVEL", "API_KEYS", *mine):
        assert f"  {name} " in out, name
    for name in others:
        assert f"  {name} " not in out, name
    assert "redis://127.0.0.1:6379/0" in out and "INFO" in out
    if prog != "gary-stack":
        assert "--port PORT" in out and "(default: " in out


def test_the_gateway_has_no_demo_flag() -> None:
    assert "--demo" not in _run("gpuqueue.cli", "--help").stdout
    done = _run("gpuqueue.cli", "--demo")
    assert done.returncode == 2 and "unrecognized arguments: --demo" in done.stderr


@pytest.mark.parametrize(("variable", "value", "allowed"), [
    ("LOG_LEVEL", "loud", "'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"),
    ("SESSION_STORE", "postgres", "'mongo' or 'sqlite'"),
])
@pytest.mark.parametrize("module", ["gary.cli", "gpuqueue.cli", "garystack.cli"])
def test_a_bad_setting_is_one_line_naming_it(module: str, variable: str, value: str, allowed: str) -> None:
    args = ["up"] if module == "garystack.cli" else ["--port", "9"]
    done = _run(module, *args, **{variable: value})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and allowed in lines[0], done.stderr
    assert "Traceback" not in done.stderr
