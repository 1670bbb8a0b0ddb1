"""garycommon.metrics renders the Prometheus text format that Prometheus parses: cumulative buckets, +Inf = count,
escaped label values, every family declared before its first observation."""

from __future__ import annotations

import pytest

from garycommon.metrics import Registry


def _samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if not line.startswith("#")}


def test_histogram_buckets_are_cumulative_and_inf_is_the_count() -> None:
    reg = Registry()
    h = reg.histogram("x_seconds", "t", ("type",), buckets=(1, 5))
    for value in (0.5, 2, 7, 7):
        h.observe(value, type='we"ird\\')
    s = _samples(reg.render())
    label = 'type="we\\"ird\\\\"'
    assert s[f'x_seconds_bucket{{{label},le="1"}}'] == 1
    assert s[f'x_seconds_bucket{{{label},le="5"}}'] == 2
    assert s[f'x_seconds_bucket{{{label},le="+Inf"}}'] == 4 == s[f"x_seconds_count{{{label}}}"]
    assert s[f"x_seconds_sum{{{label}}}"] == 16.5


def test_families_are_declared_before_any_observation() -> None:
    reg = Registry()
    reg.counter("jobs_total", "c", ("outcome",))
    reg.histogram("plain_seconds", "h", buckets=(1,))
    text = reg.render()
    assert "# TYPE jobs_total counter" in text and "# TYPE plain_seconds histogram" in text
    assert 'plain_seconds_bucket{le="+Inf"} 0' in text  # an unlabelled family shows its zero series


def test_counter_labels_must_match_and_time_observes_failures() -> None:
    reg = Registry()
    c = reg.counter("jobs_total", "c", ("type", "outcome"))
    with pytest.raises(ValueError):
        c.inc(type="generate")
    c.inc(type="generate", outcome="failed")
    h = reg.histogram("work_seconds", "h", buckets=(10,))
    with pytest.raises(RuntimeError), h.time():
        raise RuntimeError("boom")
    s = _samples(reg.render())
    assert s['jobs_total{type="generate",outcome="failed"}'] == 1
    assert s["work_seconds_count"] == 1
