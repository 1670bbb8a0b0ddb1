"""gary's session store: one `SessionStore` interface, MongoDB+GridFS or the embedded SQLite+files default."""

from __future__ import annotations

from garycommon.settings import Settings

from .base import AUDIO_SLOTS, AudioSlot, SessionStore, check_session_id

__all__ = ["AUDIO_SLOTS", "AudioSlot", "SessionStore", "check_session_id", "open_session_store"]


def open_session_store(settings: Settings) -> SessionStore:
    """Build the backend chosen by SESSION_STORE; connections open lazily, so this never blocks the event loop."""
    if settings.session_store == "mongo":
        from .mongo import MongoSessionStore

        return MongoSessionStore(settings)
    from .sqlite import SqliteSessionStore

    return SqliteSessionStore(settings)
