"""terry under schema-driven and junk requests from its own OpenAPI (bounded; FUZZ_SCALE for more): no 5xx, no
hang, still healthy, and a well-formed transform on another connection served throughout."""

from __future__ import annotations

import httpx

from terry.schemas import TransformRequest
from tests.fuzzing import ValidClient, fuzz_http
from tests.terry.terry_helpers import Terry, wav_b64


def test_terry_fuzz(terry: Terry) -> None:
    spec = httpx.get(f"{terry.url}/openapi.json").json()
    audio = wav_b64(1.5)

    def valid(http: httpx.Client) -> bool:
        r = http.post("/transform", json={"variation": "celtic", "audio": audio, "steps": 2})
        return r.status_code == 200 and "audio" in r.text

    with ValidClient(valid, terry.url, interval=2.0) as client:
        prober = fuzz_http(terry.url, spec, examples=300,
                           body_schemas={"/transform": TransformRequest.model_json_schema()})
    assert prober.defects == [], prober.defects[:10]
    assert client.failed == 0 and client.ok > 0
    assert httpx.get(f"{terry.url}/health", timeout=30).status_code == 200
