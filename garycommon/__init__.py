"""Code every gary-backend service shares: settings, audio I/O, errors, Redis keys, hub loading, HTTP helpers."""
