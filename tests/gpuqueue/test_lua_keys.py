"""The gateway's Lua scripts and garycommon.rediskeys spell every key alike; the waiting-lanes index heals itself."""

from __future__ import annotations

import inspect
import re
from importlib import resources

import httpx
import redis as redis_sync

from garycommon import rediskeys

COUNTERS = {"seq", "ticket", "fence", "gpu_seq"}  # rediskeys.gq_counter(name)


def lua_names() -> set[str]:
    folder = resources.files("gpuqueue") / "lua"
    text = "".join((folder / name).read_text() for name in ("lib.lua", "enqueue.lua", "gpu.lua", "expire.lua"))
    return set(re.findall(r"P \.\. '([a-z_:]+)'", text))


def python_names() -> set[str]:
    out = set()
    for name, fn in vars(rediskeys).items():
        if name.startswith("gq_") and name != "gq_counter" and callable(fn):
            args = ["\0"] * len(inspect.signature(fn).parameters)
            key = fn(*args)[len(rediskeys.QUEUE_PREFIX):]
            out.add(key.split("\0")[0])  # a parametrised key: its fixed start, e.g. `task:`
    return out


def test_every_lua_key_is_a_rediskeys_key() -> None:
    lua, py = lua_names(), python_names()
    assert "waiting_lanes" in lua and "task:" in lua  # the pattern still finds them
    missing = {name for name in lua - COUNTERS if name not in py}
    assert not missing, f"keys the scripts build that garycommon.rediskeys does not name: {sorted(missing)}"


def test_waiting_lanes_index_is_rebuilt_at_start_and_pruned(make_gateway, http: httpx.Client,
                                                           rdb: redis_sync.Redis) -> None:
    first = make_gateway(queue_gpus="gpu0=10000")
    held = http.post(f"{first.url}/leases", json={"model": "m", "lane": "generation", "owner": "a",
                                                  "vram_mb": 10000}).json()
    queued = http.post(f"{first.url}/leases", json={"model": "m", "lane": "generation", "owner": "b",
                                                    "vram_mb": 4000}).json()
    assert held["status"] == "granted" and queued["status"] == "queued"
    assert rdb.smembers(rediskeys.gq_waiting_lanes()) == {"generation"}
    # state written before the index existed: the queue is there, the index is not
    rdb.delete(rediskeys.gq_waiting_lanes())
    second = make_gateway(queue_gpus="gpu0=10000")  # a (re)started replica lists every lane again
    assert "generation" in rdb.smembers(rediskeys.gq_waiting_lanes())
    http.post(f"{second.url}/leases/{held['lease_id']}/release", json={"fencing_token": held["fencing_token"]})
    assert http.get(f"{second.url}/leases/{queued['lease_id']}").json()["status"] == "granted"
    # the passes since dropped every lane with nobody in line
    assert rdb.smembers(rediskeys.gq_waiting_lanes()) == set()
