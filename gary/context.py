"""The long-lived objects every handler uses, built once by `gary.app.create_app`."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
import socketio

from garycommon.progress import StatusStore
from garycommon.settings import Settings

from .dispatch import Dispatcher
from .jobs import JobStore
from .notifications import Notifier
from .operations import Operations
from .runner import JobRunner
from .sessions import SessionStore
from .transform import TerryClient


@dataclass
class GaryContext:
    settings: Settings
    redis: aioredis.Redis
    sio: socketio.AsyncServer
    store: SessionStore
    jobs: JobStore
    status: StatusStore
    notifier: Notifier
    dispatcher: Dispatcher
    runner: JobRunner
    terry: TerryClient
    ops: Operations
