"""The console with API keys on (typed once, kept in the browser), with terry stopped (a clear message at once, no
hang, the rest keeps working), jerry's loops, and jerry's and terry's /docs rendering with no internet."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.flows.stack_harness import Stack, running_stack
from tests.gary_console.console_kit import OUTPUT_SECONDS, ConsolePage

pytestmark = pytest.mark.slow
KEY = "console-test-key-1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("console-keys-stack")
    with running_stack(workdir, GARY_OUTPUT_SECONDS=str(OUTPUT_SECONDS), API_KEYS=KEY) as stack:
        yield stack


@pytest.fixture
def console(browser: object, stack: Stack) -> Iterator[ConsolePage]:
    # keys on: gary refuses the Socket.IO handshake until a key is typed (issue 13), so wait for the page, not the socket
    page = ConsolePage(browser, stack.url("gary") + "/", console=False)
    page.page.wait_for_function("window.garyConsole && document.querySelector('#model option') !== null",
                                timeout=30_000)
    yield page
    page.close()


def type_key(page: object, key: str = KEY) -> None:
    page.fill("#api-key", key)
    page.click("#key-save")


def test_keys_on_key_typed_once_unlocks_queue_and_jerry(console: ConsolePage, stack: Stack) -> None:
    page = console.page
    assert "API keys are on" in page.locator("#status").text_content()
    # gary refuses the connection without a key, and the page says why (no silent retrying)
    page.wait_for_function("document.querySelector('#conn-banner').textContent.includes('needs an API key')",
                           timeout=20_000)
    assert console.state("s.connected") is False
    # without a key: the queue panel and jerry say what is missing, before sending anything
    page.wait_for_function("document.querySelector('#machine-note').textContent.includes('needs an API key')",
                           timeout=20_000)
    page.wait_for_function("!document.querySelector('#jerry-generate').disabled", timeout=30_000)
    page.click("#jerry-generate")
    page.wait_for_function("!document.querySelector('#error').hidden", timeout=30_000)
    assert "jerry needs an API key" in page.locator("#error").text_content()
    assert console.state("s.takes.length") == 0 and console.problems == []

    # a wrong key: the services refuse it (401) and the page says so
    page.fill("#api-key", "not-the-key")
    page.click("#key-save")
    page.wait_for_function("document.querySelector('#machine-note').textContent.includes('refused the API key')",
                           timeout=20_000)
    page.click("#jerry-generate")
    page.wait_for_function("document.querySelector('#error').textContent.includes('jerry refused the API key')",
                           timeout=30_000)

    # type the right key once: saved in the browser, used by every relayed call and the Socket.IO handshake
    page.fill("#api-key", KEY)
    page.click("#key-save")
    assert page.evaluate("localStorage.getItem('gary.console.apiKey')") == KEY
    page.wait_for_function("window.garyConsole.state.connected", timeout=30_000)
    page.wait_for_function("document.querySelectorAll('#gpus .bar').length > 0", timeout=20_000)
    refused = "the server responded with a status of 401"
    assert console.problems and all(refused in p for p in console.problems), console.problems  # the 401s themselves
    console.problems.clear()
    # jerry may still be loading its model (503) this early: gary now refuses wrong keys itself, at once
    page.wait_for_function("document.querySelector('#svc-jerry').dataset.state === 'up'", timeout=60_000)
    page.fill("#jerry-prompt", "boom bap drums")
    page.fill("#jerry-bpm", "90")
    page.select_option("#jerry-bars", "2")
    page.click("#jerry-generate")
    page.wait_for_function("window.garyConsole.state.takes.length === 1", timeout=240_000)
    take = console.takes()[0]
    assert take["kind"] == "jerry" and take["channels"] == 2
    assert abs(take["duration"] - 2 * 4 * 60 / 90) < 0.05, take  # 2 bars of 4/4 at 90 BPM
    assert "90 BPM · 2 bars" in take["meta"]
    assert page.locator("#error").is_hidden()

    # a reload keeps the key (typed once)
    console.reload()
    assert page.locator("#api-key").input_value() == KEY
    page.wait_for_function("document.querySelectorAll('#gpus .bar').length > 0", timeout=20_000)
    assert console.problems == [] and console.external == []


def test_terry_stopped_gives_a_clear_message_and_no_hang(console: ConsolePage, stack: Stack, tmp_path: Path) -> None:
    page = console.page
    from tests.gary_console.console_kit import wav_file

    type_key(page)
    page.wait_for_function("window.garyConsole.state.connected", timeout=30_000)

    page.set_input_files("#file-input", str(wav_file(tmp_path / "riff.wav")))
    console.wait_takes(1)
    page.wait_for_function("document.querySelector('#svc-terry').dataset.state === 'up'", timeout=30_000)
    terry = stack.child_pid("terry.cli")
    os.kill(terry, signal.SIGSTOP)  # terry stops answering (its port still accepts connections)
    try:
        started = time.monotonic()
        page.click("#transform")  # the pill still says up: the click itself must find out
        page.wait_for_function("!document.querySelector('#error').hidden", timeout=15_000)
        took = time.monotonic() - started
        message = page.locator("#error").text_content()
        assert "terry" in message and "not available" in message, message
        assert took < 10, took
        assert console.state("s.pending") is None and console.state("s.busy") is False
        # the health poll marks it down and says so in the terry panel; transform is disabled, gary still works
        page.wait_for_function("document.querySelector('#svc-terry').dataset.state === 'down'", timeout=20_000)
        note = page.locator("#terry-note")
        assert note.is_visible() and "terry is not answering" in note.text_content()
        assert page.locator("#transform").is_disabled()
        assert page.locator("#generate").is_enabled()
    finally:
        os.kill(terry, signal.SIGCONT)
    page.wait_for_function("document.querySelector('#svc-terry').dataset.state === 'up'", timeout=30_000)
    assert page.locator("#terry-note").is_hidden() and page.locator("#transform").is_enabled()
    assert console.problems == [] and console.external == []


@pytest.mark.parametrize("service", ["jerry", "terry"])
def test_docs_render_with_no_internet(browser: object, stack: Stack, service: str) -> None:
    base = f"http://127.0.0.1:{stack.ports[service]}"
    html = httpx.get(f"{base}/docs", timeout=10).text
    assert "/docs-assets/swagger-ui-bundle.js" in html and "cdn" not in html.lower()
    assert httpx.get(f"{base}/redoc", timeout=10).status_code == 404  # its script lives on a CDN: not offered
    tab = ConsolePage(browser, f"{base}/docs", console=False)
    try:
        tab.page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
        assert service in tab.page.locator(".swagger-ui .info .title").text_content()
        assert tab.page.locator(".opblock").count() > 0  # the operations rendered from /openapi.json
        assert tab.external == [] and tab.problems == []
    finally:
        tab.context.close()
