"""A musician's session in the web console, in real Chromium against `gary-stack up --demo` (queue gateway mode):
load a file, generate, continue, retry, transform, undo, crop and download, each step a new take whose audio the page
decoded; and a connection killed mid-generation still gets its result (verify_session)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf

from tests.flows.stack_harness import Stack, running_stack
from tests.gary_console.console_kit import OUTPUT_SECONDS, ConsolePage, wav_file

pytestmark = pytest.mark.slow
STEP_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("console-stack"), GARY_OUTPUT_SECONDS=str(OUTPUT_SECONDS)) as stack:
        yield stack


@pytest.fixture
def console(browser: object, stack: Stack) -> Iterator[ConsolePage]:
    page = ConsolePage(browser, stack.url("gary") + "/")
    yield page
    page.close()


def assert_clean(console: ConsolePage) -> None:
    assert console.problems == [], console.problems
    assert console.external == [], f"the page asked for outside resources: {console.external}"


def check_take(take: dict, kind: str, *, min_s: float = 0.5, max_s: float = 60.0) -> None:
    assert take["kind"] == kind, take
    assert take["channels"] >= 1 and take["frames"] > 0 and take["sampleRate"] > 0, take
    assert min_s <= take["duration"] <= max_s, take
    assert abs(take["frames"] / take["sampleRate"] - take["duration"]) < 0.01, take


def run_job(console: ConsolePage, button: str, kind: str, count: int) -> dict:
    """Click `button`, wait for take number `count`, check that progress reached 100 for this job."""
    page = console.page
    before = console.state("s.progressLog.length")
    page.click(button)
    takes = console.wait_takes(count, STEP_TIMEOUT_S)
    assert len(takes) == count, takes
    progress = console.state(f"s.progressLog.slice({before}).filter(p => p.kind === '{kind}').map(p => p.progress)")
    assert progress and max(progress) == 100, progress
    assert console.state("s.pending") is None
    assert page.locator("#progress").get_attribute("value") == "100"
    assert page.locator("#error").is_hidden(), page.locator("#error").text_content()
    return takes[-1]


def test_musician_session_walk(console: ConsolePage, tmp_path: Path) -> None:
    page = console.page
    page.wait_for_function("document.querySelector('#svc-queue').dataset.state === 'up'", timeout=20_000)
    console.screenshot("empty")

    # load a file (3 s stereo wav)
    page.set_input_files("#file-input", str(wav_file(tmp_path / "riff.wav")))
    takes = console.wait_takes(1)
    check_take(takes[0], "input", min_s=2.9, max_s=3.1)
    assert takes[0]["channels"] == 2 and takes[0]["peak"] > 0.2

    # generate: a 1 s prompt continued to the configured output length
    page.fill("#prompt-duration", "1")
    page.click("#generate")
    page.wait_for_function("(() => { const s = window.garyConsole.state; "
                           "return (s.pending && s.pending.maxProgress > 0) || s.takes.length > 1; })()",
                           timeout=STEP_TIMEOUT_S * 1000)
    console.screenshot("generating")
    takes = console.wait_takes(2, STEP_TIMEOUT_S)
    progress = console.state("s.progressLog.filter(p => p.kind === 'generate').map(p => p.progress)")
    assert max(progress) == 100, progress
    check_take(takes[1], "generate", min_s=OUTPUT_SECONDS - 0.2, max_s=OUTPUT_SECONDS + 0.2)
    session = console.state("s.sessionId")
    assert session
    assert_clean(console)

    # continue, then retry the continuation
    check_take(run_job(console, "#continue", "continue", 3), "continue")
    check_take(run_job(console, "#retry", "retry", 4), "retry")
    assert console.state("s.sessionId") == session
    assert_clean(console)

    # transform with a named variation
    page.select_option("#variation", "synth_retro")
    transformed = run_job(console, "#transform", "transform", 5)
    check_take(transformed, "transform")
    assert "synth_retro" in transformed["meta"]
    assert_clean(console)

    # undo the transform: back to the retried take's audio
    page.click("#undo")
    takes = console.wait_takes(6, 60)
    check_take(takes[5], "undo")
    assert abs(takes[5]["duration"] - takes[3]["duration"]) < 0.05, takes
    page.wait_for_function("!document.querySelector('#continue').disabled")

    # crop: drag across 10%..60% of the selected (undo) take's waveform
    canvas = page.locator('#takes .take[data-index="5"] canvas.wave')
    box = canvas.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.1, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.35, y, steps=5)
    page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=5)
    page.mouse.up()
    page.wait_for_function("!document.querySelector('#crop').disabled")
    page.click("#crop")
    takes = console.wait_takes(7, 60)
    check_take(takes[6], "crop", min_s=0.2)
    assert abs(takes[6]["duration"] - 0.5 * takes[5]["duration"]) < 0.1, takes
    assert console.state("s.sessionId") == session
    page.wait_for_function("window.garyConsole.state.busy === false")

    # play the cropped take (decoded audio through Web Audio), then stop
    crop_node = page.locator('#takes .take[data-index="6"]')
    crop_node.locator("button.play").click()
    page.wait_for_function("window.garyConsole.state.player !== null")
    crop_node.locator("button.stop").click()
    page.wait_for_function("window.garyConsole.state.player === null")

    # download the cropped take: a WAV of the same length
    with page.expect_download() as info:
        crop_node.locator("a.download").click()
    download = info.value
    assert download.suggested_filename.endswith(".wav")
    data, rate = sf.read(io.BytesIO(Path(download.path()).read_bytes()))
    assert abs(len(data) / rate - takes[6]["duration"]) < 0.02

    page.locator("#takes-panel").scroll_into_view_if_needed()
    console.screenshot("session")
    page.click("#machine-refresh")
    page.wait_for_function("document.querySelectorAll('#gpus .bar').length > 0 && "
                           "document.querySelectorAll('#health-cards .card').length === 4")
    console.screenshot("queue-panel", "#machine")
    assert "gateway" in page.locator('#health-cards .card[data-service="gary"]').text_content()
    assert_clean(console)


def start_generation(console: ConsolePage, tmp_path: Path) -> object:
    """Load a 2 s riff, press generate with a 1 s prompt, and wait until gary accepted the job; returns the page."""
    page = console.page
    page.set_input_files("#file-input", str(wav_file(tmp_path / "riff.wav", seconds=2.0)))
    console.wait_takes(1)
    page.fill("#prompt-duration", "1")
    page.click("#generate")
    page.wait_for_function("window.garyConsole.state.pending && window.garyConsole.state.pending.acked",
                           timeout=STEP_TIMEOUT_S * 1000)
    return page


def test_killed_connection_mid_generation_still_gets_its_result(console: ConsolePage, tmp_path: Path) -> None:
    page = start_generation(console, tmp_path)
    # the request was accepted (the job exists on gary): now drop the connection under the page's feet
    first_sid = page.evaluate("window.garyConsole.socket.id")
    page.evaluate("window.garyConsole.socket.io.engine.close()")
    page.wait_for_function(f"window.garyConsole.state.reconnects >= 1 && window.garyConsole.socket.id !== '{first_sid}'",
                           timeout=30_000)
    takes = console.wait_takes(2, STEP_TIMEOUT_S)
    check_take(takes[1], "generate", min_s=OUTPUT_SECONDS - 0.2, max_s=OUTPUT_SECONDS + 0.2)
    assert console.state("s.pending") is None
    assert console.state("s.takes.filter(t => t.kind === 'generate').length") == 1  # no duplicate on re-delivery
    assert_clean(console)


def test_reload_mid_generation_resumes_the_session(console: ConsolePage, tmp_path: Path) -> None:
    start_generation(console, tmp_path)
    session = console.state("s.sessionId")
    console.reload()  # the takes are gone with the page; the session and its running job are not
    assert console.state("s.sessionId") == session
    takes = console.wait_takes(1, STEP_TIMEOUT_S)
    check_take(takes[0], "generate", min_s=OUTPUT_SECONDS - 0.2, max_s=OUTPUT_SECONDS + 0.2)
    assert console.state("s.pending") is None and console.state("s.sessionId") == session
    assert_clean(console)


def test_phone_sized_screen_and_keyboard(browser: object, stack: Stack) -> None:
    phone = ConsolePage(browser, stack.url("gary") + "/", viewport={"width": 390, "height": 844})
    try:
        page = phone.page
        page.wait_for_function("document.querySelector('#svc-terry').dataset.state !== 'unknown'", timeout=20_000)
        wide = page.evaluate("[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > "
                             "window.innerWidth + 0.5).map(e => `${e.tagName}#${e.id}.${e.className}`)")
        assert wide == [], wide  # no sideways scrolling
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        for sel in ("#generate", "#transform", "#jerry-generate", "#api-key"):
            box = page.locator(sel).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, (sel, box)
        # the file picker and the first controls are reachable with the keyboard, in reading order
        page.keyboard.press("Tab")
        first = page.evaluate("document.activeElement.id")
        assert first == "api-key", first
        page.locator("#file-input").focus()
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "record"
        phone.screenshot("phone")
        assert phone.problems == [] and phone.external == []
    finally:
        phone.close()
