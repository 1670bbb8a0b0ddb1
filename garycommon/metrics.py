"""Prometheus text exposition (format 0.0.4) for gary, jerry and terry: counters and histograms kept in the process.

One registry per service name, so services that share a process (tests, `gary-stack` children never do) keep apart.
No client library: the handful of families below needs ~100 lines, and the text format is stable. Every family is
listed (HELP/TYPE) from the start, so a dashboard's queries resolve before the first job; labelled series appear
once observed. The queue gateway renders its own, cluster-wide, from Redis (gpuqueue.metrics).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
WAIT_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Sequence[str], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_esc(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Family:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str]) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self._lock = threading.Lock()  # observed from worker threads (jerry's batcher) and the event loop

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Family):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str]) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[tuple[str, ...], float] = {} if self.label_names else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [*self.header(), *(f"{self.name}{_labels(self.label_names, k)} {v:g}" for k, v in items)]


class Histogram(_Family):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, labels: Sequence[str], buckets: Sequence[float]) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[tuple[str, ...], list[float]] = {}  # per-bucket counts, then +Inf count, then sum
        if not self.label_names:  # one series, shown (all zero) before the first observation
            self._series[()] = [0.0] * (len(self.buckets) + 2)

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            row = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    row[i] += 1
            row[-2] += 1
            row[-1] += value

    @contextmanager
    def time(self, **labels: str) -> Iterator[None]:
        """Observe the seconds the block took (also when it raises: a failed generation took time too)."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.observe(time.monotonic() - started, **labels)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        out = self.header()
        for key, row in items:
            for bound, count in zip(self.buckets, row, strict=False):
                le = f'le="{bound:g}"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {count:g}")
            inf = 'le="+Inf"'
            out.append(f"{self.name}_bucket{_labels(self.label_names, key, inf)} {row[-2]:g}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {row[-1]:g}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {row[-2]:g}")
        return out


class Registry:
    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        family = self._families.setdefault(name, Counter(name, help_text, labels))
        assert isinstance(family, Counter), f"{name} registered twice with different types"
        return family  # re-imports share the first instance

    def histogram(self, name: str, help_text: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = SECONDS_BUCKETS) -> Histogram:
        family = self._families.setdefault(name, Histogram(name, help_text, labels, buckets))
        assert isinstance(family, Histogram), f"{name} registered twice with different types"
        return family

    def names(self) -> list[str]:
        return list(self._families)

    def render(self) -> str:
        lines = [line for fam in self._families.values() for line in fam.render()]
        return "\n".join(lines) + "\n"


_REGISTRIES: dict[str, Registry] = {}


def registry(service: str) -> Registry:
    """The process's registry for `service` (gary, jerry, terry)."""
    return _REGISTRIES.setdefault(service, Registry())


def install_metrics(app: FastAPI, service: str) -> None:
    """GET /metrics: the service's families in the Prometheus text format (what monitoring/prometheus.yml scrapes)."""
    reg = registry(service)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(reg.render(), media_type=CONTENT_TYPE)


# The services' families (monitoring/grafana/dashboards/gary.json charts them; tests/deploy checks each one is served).
GARY_JOBS = registry("gary").counter(
    "gary_jobs_total", "Jobs finished, by job type and outcome (completed, failed).", ("type", "outcome"))
GARY_GENERATION_SECONDS = registry("gary").histogram(
    "gary_generation_seconds", "Seconds a job spent in the engine (generation, continuation or transform).", ("type",))
GARY_QUEUE_WAIT_SECONDS = registry("gary").histogram(
    "gary_queue_wait_seconds", "Seconds from a job's creation to its start on the GPU.", ("type",), WAIT_BUCKETS)
JERRY_GENERATION_SECONDS = registry("jerry").histogram(
    "jerry_generation_seconds", "Seconds per request from submission to audio (batching wait included).")
JERRY_BATCH_SIZE = registry("jerry").histogram(
    "jerry_batch_size", "Requests per sampler run.", buckets=SIZE_BUCKETS)
TERRY_TRANSFORM_SECONDS = registry("terry").histogram(
    "terry_transform_seconds", "Seconds per MelodyFlow transform on the GPU (model load and queueing excluded).")
