"""Helpers of the console tests: `gary-stack up --demo` on free ports, and a Chromium tab on the console that records
every console error, page error, failed request and request for anything outside the stack."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.servers import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "console-screenshots"  # the latest run's; the committed copies are in docs/console/
OUTPUT_SECONDS = 4.0



@dataclass
class Stack:
    ports: dict[str, int]
    proc: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gary']}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def child_pid(self, module: str) -> int:
        """The pid of the stack's child running `module` (e.g. terry.cli)."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid and f"from {module} import" in cmd:
                return int(entry.name)
        raise LookupError(f"no {module} child of the stack")


def start_stack(workdir: Path, extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    ports = {name: free_port() for name in ("gary", "jerry", "terry", "queue", "redis")}
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "QUEUE_URL", "LOCAL_MODELS_DIR", "API_KEYS"}}
    env.update(GARY_OUTPUT_SECONDS=str(OUTPUT_SECONDS), PYTHONUNBUFFERED="1", **(extra_env or {}))
    argv = [sys.executable, "-c", "import sys; from garystack.cli import main; sys.exit(main())", "up", "--demo",
            "--data-dir", str(workdir / "data"), *[a for n, p in ports.items() for a in (f"--{n}-port", str(p))]]
    log_path = workdir / "stack.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stack = Stack(ports, proc, log_path, env)
    try:
        deadline = time.monotonic() + 480
        while "stack is up" not in stack.log():
            assert proc.poll() is None, f"gary-stack exited early:\n{stack.log()[-4000:]}"
            assert time.monotonic() < deadline, "stack did not come up in time:\n" + stack.log()[-4000:]
            time.sleep(1)
        yield stack
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


class ConsolePage:
    """One browser tab on the console, recording every console error, page error and failed request."""

    def __init__(self, browser: object, url: str, *, console: bool = True, viewport: dict | None = None) -> None:
        self.context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900}, accept_downloads=True)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: self.problems.append(f"console.{m.type}: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} {r.failure}"))
        self.external: list[str] = []
        self.page.route("**/*", self._only_local)
        self.page.goto(url)
        if console:
            self.page.wait_for_function("window.garyConsole && document.querySelector('#model option') !== null "
                                        "&& window.garyConsole.state.connected", timeout=30_000)

    def _only_local(self, route: object) -> None:
        """The console must load and work with no internet: anything not served by the stack is refused."""
        url = route.request.url
        if url.startswith(("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:")):
            route.continue_()
        else:
            self.external.append(url)
            route.abort()

    def state(self, expr: str) -> object:
        return self.page.evaluate(f"(() => {{ const s = window.garyConsole.state; return {expr}; }})()")

    def takes(self) -> list[dict]:
        return self.state("s.takes.map(t => ({kind: t.kind, label: t.label, duration: t.duration, channels: "
                          "t.channels.length, frames: t.channels[0].length, sampleRate: t.sampleRate, "
                          "peak: t.channels.reduce((m, c) => Math.max(m, c.reduce((a, v) => Math.max(a, Math.abs(v)), 0)), 0), "
                          "jobId: t.jobId, meta: t.meta}))")

    def wait_takes(self, count: int, timeout_s: float = 240) -> list[dict]:
        self.page.wait_for_function(f"window.garyConsole.state.takes.length >= {count}", timeout=timeout_s * 1000)
        return self.takes()

    def screenshot(self, name: str, selector: str | None = None) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        target = self.page.locator(selector) if selector else self.page
        kwargs = {} if selector else {"full_page": True}
        target.screenshot(path=str(SHOTS / f"{name}.png"), **kwargs)

    def close(self) -> None:
        self.context.close()


def wav_file(path: Path, seconds: float = 3.0, sr: int = 44100) -> Path:
    t = np.arange(int(sr * seconds)) / sr
    data = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, data.astype(np.float32), sr, format="WAV", subtype="PCM_16")
    path.write_bytes(buf.getvalue())
    return path
