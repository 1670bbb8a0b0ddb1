"""Bounded fuzzing shared by the services' fuzz suites (issue 14: keep it hostile in CI).

`openapi_operations` reads a live server's OpenAPI document; `request_strategy` draws requests for one operation:
bodies generated from its JSON schema (valid-looking), the same with one field replaced by junk, arbitrary JSON,
and raw bytes under every content type the route accepts. `Prober` sends them and records what would be a defect: a
5xx that is not a documented "unavailable", a hang (client timeout) or a dead server. `ValidClient` keeps a well-formed
request going on another connection throughout and counts its failures. Budgets are per suite, scaled by
FUZZ_SCALE, so CI stays bounded while a local run can go deeper.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))  # CI runs 1; `FUZZ_SCALE=20` for a deep local run


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))
UNAVAILABLE_CODES = {"SERVICE_UNAVAILABLE", "QUEUE_UNAVAILABLE", "MODEL_GATED", "MODEL_NOT_FOUND", "MODEL_LOAD_FAILED",
                     "GPU_OOM"}

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
                    st.sampled_from(["", "../../etc/passwd", "x" * 5000, "\x00", "-1", "NaN", "1e309", "{}", "[]"]))
any_json = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                        max_leaves=12)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    body_schema: dict[str, Any] | None
    content_types: tuple[str, ...]
    params: tuple[tuple[str, str, dict[str, Any]], ...]  # (name, where, schema)

    def __repr__(self) -> str:  # hypothesis prints the sampled list on failure: keep it readable
        return f"{self.method} {self.path}"


def _resolve(schema: Any, components: dict[str, Any]) -> Any:
    """Inline every $ref (hypothesis-jsonschema needs a self-contained schema)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _resolve(components[schema["$ref"].rsplit("/", 1)[-1]], components)
        return {k: _resolve(v, components) for k, v in schema.items() if k not in ("discriminator", "examples")}
    if isinstance(schema, list):
        return [_resolve(v, components) for v in schema]
    return schema


def openapi_operations(spec: dict[str, Any], skip: Callable[[str, str], bool] = lambda m, p: False) -> list[Operation]:
    components = spec.get("components", {}).get("schemas", {})
    ops = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "delete", "patch") or skip(method.upper(), path):
                continue
            content = (op.get("requestBody") or {}).get("content", {})
            body = None
            for ctype in ("application/json", "multipart/form-data", "application/x-www-form-urlencoded"):
                if ctype in content and "schema" in content[ctype]:
                    body = _resolve(content[ctype]["schema"], components)
                    break
            params = tuple((p["name"], p["in"], _resolve(p.get("schema", {}), components))
                           for p in op.get("parameters", []) if p.get("in") in ("path", "query"))
            ops.append(Operation(method.upper(), path, body, tuple(content) or ("application/json",), params))
    return ops


def _from_schema(schema: dict[str, Any] | None, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values that mostly satisfy a (resolved) JSON schema: the subset FastAPI/pydantic emit (object, string with
    pattern/length, integer/number with bounds, boolean, enum, anyOf, array, null); anything else is junk."""
    if not schema or depth > 6:
        return any_json
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return st.one_of([_from_schema(o, depth + 1) for o in options])
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: _from_schema(v, depth + 1) for k, v in props.items() if k in required},
            optional={k: _from_schema(v, depth + 1) for k, v in props.items() if k not in required},
        )
    if kind == "array":
        return st.lists(_from_schema(schema.get("items"), depth + 1), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 4), 4))
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda s: len(s) <= 200)
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40))
    if kind in ("integer", "number"):
        low, high = schema.get("minimum", schema.get("exclusiveMinimum")), schema.get("maximum", schema.get("exclusiveMaximum"))
        if kind == "integer":
            return st.integers(min_value=None if low is None else int(low), max_value=None if high is None else int(high))
        return st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return any_json


def _segment(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return quote(text, safe="") or "x"


@st.composite
def request_strategy(draw: st.DrawFn, op: Operation) -> dict[str, Any]:
    path, query = op.path, {}
    for name, where, schema in op.params:
        value = draw(st.one_of(_from_schema(schema), scalars))
        if where == "path":
            path = path.replace("{" + name + "}", _segment(value)).replace("{" + name + ":path}", _segment(value))
        elif value is not None:
            query[name] = value if isinstance(value, str) else json.dumps(value)
    path = re.sub(r"\{[^}]+\}", "x", path)
    request: dict[str, Any] = {"method": op.method, "url": path, "params": query}
    if op.method in ("GET", "DELETE"):
        return request
    kind = draw(st.sampled_from(["schema", "schema-one-junk", "json", "raw"]))
    if kind == "raw":
        request["content"] = draw(st.one_of(st.binary(max_size=300), st.sampled_from(
            [b"[" * 5000, b'{"a": NaN}', b"\xff\xfe", b'{"x": 1e999999}', b"null"])))
        request["headers"] = {"content-type": draw(st.sampled_from([*op.content_types, "text/plain", "application/json"]))}
        return request
    body = draw(_from_schema(op.body_schema) if kind.startswith("schema") else any_json)
    if kind == "schema-one-junk" and isinstance(body, dict) and body:
        body[draw(st.sampled_from(sorted(body)))] = draw(any_json)
    if "application/json" in op.content_types or not isinstance(body, dict):
        request["content"] = json.dumps(body, allow_nan=True).encode()
        request["headers"] = {"content-type": "application/json"}
    else:
        request["data"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()}
    return request


@dataclass
class Prober:
    base_url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 30.0
    sent: int = 0
    defects: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.base_url, timeout=self.timeout, headers=self.headers)

    def send(self, request: dict[str, Any]) -> None:
        self.sent += 1
        described = f"{request['method']} {request['url']} {str(request.get('content') or request.get('data'))[:200]}"
        try:
            r = self.http.request(**request)
        except httpx.TimeoutException:
            self.defects.append(f"hang: {described}")
            return
        except httpx.HTTPError as exc:
            self.defects.append(f"{type(exc).__name__}: {described}")
            return
        if r.status_code >= 500:
            try:
                code = r.json().get("code")
            except ValueError:
                code = None
            if not (r.status_code in (503, 504) and code in UNAVAILABLE_CODES):
                self.defects.append(f"{r.status_code} {r.text[:200]}: {described}")

    def close(self) -> None:
        self.http.close()


class ValidClient(threading.Thread):
    """A well-formed request every `interval` seconds on its own connection while the fuzzer runs."""

    def __init__(self, call: Callable[[httpx.Client], bool], base_url: str, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.call, self.base_url, self.interval = call, base_url, interval
        self.ok = self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as http:
            while not self.stop.is_set():
                try:
                    good = self.call(http)
                except httpx.HTTPError:
                    good = False
                self.ok += good
                self.failed += not good
                self.stop.wait(self.interval)

    def __enter__(self) -> ValidClient:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.join(90)


def fuzz_http(base_url: str, spec: dict[str, Any], *, examples: int = 300, headers: dict[str, str] | None = None,
              skip: Callable[[str, str], bool] = lambda m, p: False,
              body_schemas: dict[str, dict[str, Any]] | None = None) -> Prober:
    """`examples` (x FUZZ_SCALE) requests drawn over every operation of `spec`; `body_schemas` supplies the body schema
    of routes that read their body by hand (so the document has none), keyed by path."""
    from dataclasses import replace

    from hypothesis import given

    extra = body_schemas or {}
    ops = [replace(op, body_schema=_resolve(extra[op.path], extra[op.path].get("$defs", {})))
           if op.path in extra and op.body_schema is None else op for op in openapi_operations(spec, skip)]
    assert ops, "no operations to fuzz"
    prober = Prober(base_url, headers or {})

    @fuzz_settings(examples)
    @given(st.sampled_from(ops).flatmap(request_strategy))
    def run(request: dict[str, Any]) -> None:
        prober.send(request)

    started = time.monotonic()
    run()
    prober.close()
    print(f"fuzzed {base_url}: {prober.sent} requests over {len(ops)} operations in {time.monotonic() - started:.0f} s")
    return prober
