"""Helpers of the console tests: a Chromium tab on the console that records every console error, page error, failed
request and request for anything outside the stack. The stack itself is the flow tests' `running_stack`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "console-screenshots"  # the latest run's; the committed copies are in docs/console/
OUTPUT_SECONDS = 4.0



class ConsolePage:
    """One browser tab on the console, recording every console error, page error and failed request."""

    def __init__(self, browser: object, url: str, *, console: bool = True, viewport: dict | None = None) -> None:
        self.context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900}, accept_downloads=True)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.navigating = False  # set by `reload`: the browser cancels what the page had in flight
        self.page.on("console", lambda m: self.problems.append(f"console.{m.type}: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", self._request_failed)
        self.external: list[str] = []
        self.page.route("**/*", self._only_local)
        self.page.goto(url)
        if console:
            self.page.wait_for_function("window.garyConsole && document.querySelector('#model option') !== null "
                                        "&& window.garyConsole.state.connected", timeout=30_000)

    def reload(self) -> None:
        """Reload the page as a musician would and wait until the console is connected again."""
        self.navigating = True
        try:
            self.page.reload()
            self.page.wait_for_function("window.garyConsole && window.garyConsole.state.connected", timeout=30_000)
        finally:
            self.navigating = False

    def _request_failed(self, request: object) -> None:
        """A failed request is a problem, except one the browser itself cancelled because the page navigated away
        (a reload aborts the console's in-flight health polls: net::ERR_ABORTED, with the page's own navigation)."""
        if request.failure == "net::ERR_ABORTED" and self.navigating:  # type: ignore[attr-defined]
            return
        self.problems.append(f"request failed: {request.url} {request.failure}")  # type: ignore[attr-defined]

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
