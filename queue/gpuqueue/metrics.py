"""Prometheus text exposition of the shared queue state (any replica shows the whole cluster's numbers)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from garycommon import rediskeys

from .scheduler import BUCKETS


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _line(name: str, labels: dict[str, str], value: float) -> str:
    inner = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}} {value:g}" if inner else f"{name} {value:g}"


async def collect(redis: aioredis.Redis, lanes: list[str]) -> dict[str, Any]:
    async with redis.pipeline(transaction=False) as pipe:
        for lane in lanes:
            pipe.zcard(rediskeys.gq_queued(lane))
            pipe.scard(rediskeys.gq_active(lane))
            pipe.hgetall(rediskeys.gq_histogram("wait", lane))
            pipe.hgetall(rediskeys.gq_histogram("run", lane))
        pipe.scard(rediskeys.gq_resident())
        pipe.hgetall(rediskeys.gq_gpus())
        pipe.hgetall(rediskeys.gq_gpu_used())
        pipe.hgetall(rediskeys.gq_counters())
        pipe.zcard(rediskeys.gq_outbox())
        rows = await pipe.execute()
    per_lane = {lane: rows[i * 4:(i + 1) * 4] for i, lane in enumerate(lanes)}
    resident, caps, used, counters, outbox = rows[len(lanes) * 4:]
    return {"lanes": per_lane, "resident": resident, "caps": caps, "used": used, "counters": counters,
            "outbox": outbox}


def render(data: dict[str, Any]) -> str:
    out: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    family("gq_queue_depth", "gauge", "Tasks waiting per lane.")
    for lane, (depth, _, _, _) in data["lanes"].items():
        out.append(_line("gq_queue_depth", {"lane": lane}, depth))
    family("gq_leases_held", "gauge", "Granted (running) leases per lane; resident leases under lane=\"resident\".")
    for lane, (_, active, _, _) in data["lanes"].items():
        out.append(_line("gq_leases_held", {"lane": lane}, active))
    out.append(_line("gq_leases_held", {"lane": "resident"}, data["resident"]))
    family("gq_vram_capacity_mb", "gauge", "Leasable VRAM per GPU.")
    for gpu, cap in data["caps"].items():
        out.append(_line("gq_vram_capacity_mb", {"gpu": gpu}, float(cap)))
    family("gq_vram_granted_mb", "gauge", "VRAM granted to leases per GPU.")
    for gpu in data["caps"]:
        out.append(_line("gq_vram_granted_mb", {"gpu": gpu}, float(data["used"].get(gpu, 0))))
    family("gq_vram_free_mb", "gauge", "VRAM still leasable per GPU.")
    for gpu, cap in data["caps"].items():
        out.append(_line("gq_vram_free_mb", {"gpu": gpu}, float(cap) - float(data["used"].get(gpu, 0))))
    for kind, idx, help_text in (("wait", 2, "Seconds from enqueue (or re-queue) to grant."),
                                 ("run", 3, "Seconds a lease was held until completed/failed.")):
        name = f"gq_{kind}_seconds"
        family(name, "histogram", help_text)
        for lane, row in data["lanes"].items():
            hist = row[idx]
            cumulative = 0
            for i, bound in enumerate(BUCKETS, start=1):
                cumulative += int(hist.get(f"b{i}", 0))
                out.append(_line(f"{name}_bucket", {"lane": lane, "le": f"{bound:g}"}, cumulative))
            count = int(hist.get("count", 0))
            out.append(_line(f"{name}_bucket", {"lane": lane, "le": "+Inf"}, count))
            out.append(_line(f"{name}_sum", {"lane": lane}, float(hist.get("sum", 0))))
            out.append(_line(f"{name}_count", {"lane": lane}, count))
    groups: dict[str, list[str]] = {"finished": [], "expired": [], "notify": []}
    for field, value in sorted(data["counters"].items()):
        kind, _, rest = field.partition(":")
        if kind == "finished":
            lane, _, state = rest.partition(":")
            groups[kind].append(_line("gq_tasks_finished_total", {"lane": lane, "state": state}, float(value)))
        elif kind == "expired":
            groups[kind].append(_line("gq_leases_expired_total", {"lane": rest}, float(value)))
        elif kind == "notify":
            groups[kind].append(_line("gq_notifications_total", {"result": rest}, float(value)))
    for kind, name, help_text in (
        ("finished", "gq_tasks_finished_total", "Tasks that ended, by lane and final state."),
        ("expired", "gq_leases_expired_total", "Leases freed because their owner stopped heartbeating."),
        ("notify", "gq_notifications_total", "Callback deliveries by result (sent/retried/failed/superseded)."),
    ):
        family(name, "counter", help_text)
        out.extend(groups[kind])
    family("gq_outbox_pending", "gauge", "Notifications waiting for (re)delivery.")
    out.append(_line("gq_outbox_pending", {}, data["outbox"]))
    return "\n".join(out) + "\n"
