"""gary under fuzzing (bounded; FUZZ_SCALE for more): junk and near-valid Socket.IO events on every event name, and
schema-driven HTTP requests from its OpenAPI. Every bad event is answered with a well-formed `error` (string
`message`, never code INTERNAL), the fuzzing connection survives, HTTP answers no 5xx and never hangs, and a valid
client on another connection gets every result throughout."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
import socketio
from hypothesis import given
from hypothesis import strategies as st

from gary.payloads import ContinueRequest, CropRequest, ProcessAudioRequest, RetryRequest, SessionRequest, TransformRequest
from tests.fuzzing import ValidClient, any_json, fuzz_http, fuzz_settings, scalars
from tests.gary.gary_helpers import MODEL, Gary, wav_b64

EVENTS = ["process_audio_request", "continue_music_request", "retry_music_request", "transform_audio_request",
          "undo_transform_request", "update_cropped_audio", "restore_processed_audio", "begin_restore_audio",
          "audio_chunk", "cleanup_session_request", "verify_session", "request_progress_status"]
SMALL_WAV = wav_b64(1.0, rate=8000)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "audio_data": st.one_of(st.just(SMALL_WAV), st.just("AAAA"), st.text(max_size=20), scalars),
    "session_id": st.one_of(st.uuids().map(str), st.sampled_from(["../x", "", "a" * 200]), scalars),
    "model_name": st.one_of(st.just(MODEL), st.sampled_from(["evil/pickle", "../../x", ""]), scalars),
    "prompt_duration": st.one_of(st.integers(-5, 40), st.floats(allow_nan=True), scalars),
    "top_k": st.one_of(st.integers(-5, 5000), scalars), "temperature": st.one_of(st.floats(allow_nan=True), scalars),
    "cfg_coef": scalars, "seed": st.one_of(st.integers(-(2**40), 2**40), scalars), "description": scalars,
    "variation": st.one_of(st.sampled_from(["celtic", "nope", ""]), scalars), "flowstep": scalars, "solver": scalars,
    "chunk": st.one_of(st.text(max_size=30), scalars), "chunk_index": st.one_of(st.integers(-3, 2000), scalars),
    "total_chunks": st.one_of(st.integers(-3, 2000), scalars), "is_last": scalars,
}
VALID_CORE = {"audio_data": st.just(SMALL_WAV), "model_name": st.just(MODEL), "prompt_duration": st.just(1)}
payloads = st.one_of(any_json, st.fixed_dictionaries({}, optional=FIELDS), st.fixed_dictionaries(
    VALID_CORE, optional={k: v for k, v in FIELDS.items() if k not in VALID_CORE}))


class Recorder:
    """A synchronous python-socketio client (websocket transport) recording every event it hears."""

    def __init__(self, url: str) -> None:
        self.events: list[tuple[str, Any]] = []
        self.client = socketio.Client(reconnection=False)
        self.lock = threading.Lock()

        @self.client.on("*")
        def any_event(event: str, data: Any = None) -> None:
            with self.lock:
                self.events.append((event, data))

        self.client.connect(url, transports=["websocket"], socketio_path="/socket.io", wait_timeout=30)

    def of(self, name: str) -> list[Any]:
        with self.lock:
            return [data for event, data in self.events if event == name]


@pytest.fixture(scope="module")
def gary(make_gary: Any) -> Gary:
    return make_gary(gary_output_seconds=1.5)


def test_socketio_fuzz_gets_well_formed_errors_and_a_valid_client_is_served(gary: Gary) -> None:
    valid = Recorder(gary.url)
    fuzzer = Recorder(gary.url)
    stop = threading.Event()
    sent = {"bangs": 0}

    def bang_forever() -> None:
        while not stop.is_set():
            before = len(valid.of("audio_processed")) + len(valid.of("error"))
            valid.client.emit("process_audio_request", {"audio_data": SMALL_WAV, "model_name": MODEL, "prompt_duration": 1})
            sent["bangs"] += 1
            deadline = time.monotonic() + 120
            while len(valid.of("audio_processed")) + len(valid.of("error")) <= before and time.monotonic() < deadline:
                time.sleep(0.05)

    banger = threading.Thread(target=bang_forever, daemon=True)
    banger.start()
    emitted = {"n": 0}

    @fuzz_settings(400)
    @given(st.sampled_from(EVENTS), payloads)
    def fuzz(event: str, payload: Any) -> None:
        fuzzer.client.emit(event, payload)
        emitted["n"] += 1

    try:
        fuzz()
        time.sleep(2.0)
    finally:
        stop.set()
        banger.join(150)
    errors = fuzzer.of("error")
    assert fuzzer.client.connected, "the fuzzing connection was dropped"
    bad = [e for e in errors if not isinstance(e, dict) or not isinstance(e.get("message"), str) or e.get("code") == "INTERNAL"]
    assert bad == [], bad[:5]
    assert errors, "junk produced no error events at all"
    assert valid.of("error") == [], valid.of("error")[:3]
    assert len(valid.of("audio_processed")) == sent["bangs"] >= 1
    print(f"{emitted['n']} fuzzed events -> {len(errors)} error events; valid client: {sent['bangs']} bangs served")
    for rec in (valid, fuzzer):
        rec.client.disconnect()


def test_http_fuzz(gary: Gary) -> None:
    spec = httpx.get(f"{gary.url}/openapi.json").json()
    schemas = {"/api/juce/process_audio": ProcessAudioRequest, "/api/juce/continue_music": ContinueRequest,
               "/api/juce/retry_music": RetryRequest, "/api/juce/transform_audio": TransformRequest,
               "/api/juce/undo_transform": SessionRequest, "/api/juce/update_cropped_audio": CropRequest}

    def valid(http: httpx.Client) -> bool:
        return http.get("/health").status_code == 200

    with ValidClient(valid, gary.url) as client:
        prober = fuzz_http(gary.url, spec, examples=300, skip=lambda m, p: p.startswith("/console"),
                           body_schemas={path: model.model_json_schema() for path, model in schemas.items()})
    assert prober.defects == [], prober.defects[:10]
    assert client.failed == 0 and client.ok > 0
