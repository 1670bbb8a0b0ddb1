"""A worker process for the crash tests (run as a script): it holds a GPU slot and heartbeats until it is killed.

    gq_worker.py task  <gateway> <lane> <session_id> <fencing_token>   # gary-style: a task granted by callback
    gq_worker.py lease <gateway> <lane> <model> <vram_mb>              # our workers: QueueClient.lease()
"""

from __future__ import annotations

import asyncio
import sys

from garycommon.queueclient import QueueClient


async def main(argv: list[str]) -> None:
    mode, base, lane, name, number = argv
    client = QueueClient(base)
    if mode == "task":
        fence = int(number)
        await client.set_status(lane, name, "processing", fencing_token=fence)
        print("running", flush=True)
        while True:
            await client.heartbeat(lane, name, fencing_token=fence)
            await asyncio.sleep(0.1)
    async with client.lease(name, lane=lane, owner="crash-worker", vram_mb=int(number)) as lease:
        print("running", lease.id, lease.fencing_token, flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
