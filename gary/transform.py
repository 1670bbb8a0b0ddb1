"""Transforms run on terry (MelodyFlow): gary hands it the input, waits for the result and relays terry's errors.

The input travels as a file in TRANSFER_DIR (the shared volume terry is allowed to read) when gary can write there,
else inline as base64 — so gary and terry work with or without a shared volume. terry reports progress itself
(Redis keys and `progress_update` into the session's room); undo stays in gary.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
from pathlib import Path
from typing import Any

import httpx

from garycommon.errors import ErrorCode, GaryError
from garycommon.keys import secret
from garycommon.settings import Settings

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_RESULT_TEXT = 128 * MiB  # the original's cap on a transform result (base64 text)


class TerryClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.terry_url.rstrip("/") + "/transform"
        service_key = secret(settings.service_key)  # gary -> terry is service to service, never a user's key
        headers = {"X-API-Key": service_key} if service_key else {}
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(settings.gary_terry_timeout_seconds, connect=10.0),
                                       headers=headers)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def transform(self, session_id: str, audio: bytes, params: dict[str, Any], *, lease_id: str | None = None,
                        fencing_token: int | str | None = None) -> tuple[bytes, dict[str, Any]]:
        """POST /transform; returns (result file bytes, terry's metadata). Raises GaryError with terry's message."""
        body: dict[str, Any] = {"session_id": session_id, "variation": params["variation"]}
        for key in ("flowstep", "solver", "custom_prompt", "seed"):
            if params.get(key) is not None:
                body[key] = params[key]
        if lease_id:
            body["lease_id"] = lease_id
            body["fencing_token"] = fencing_token
        path = await asyncio.to_thread(self._write_transfer, session_id, audio)
        if path is not None:
            body["audio_file_path"] = str(path)
        else:
            body["audio"] = base64.b64encode(audio).decode("ascii")
        try:
            resp = await self._http.post(self.url, json=body)
        except httpx.ConnectError as exc:
            # gary4live shows "terry is asleep" when the message names a refused/failed connection.
            raise GaryError(ErrorCode.SERVICE_UNAVAILABLE,
                            f"terry at {self.settings.terry_url} is not reachable: Failed to establish a new connection "
                            f"(Connection refused: {exc})") from exc
        except httpx.TimeoutException as exc:
            raise GaryError(ErrorCode.TIMEOUT, f"terry did not answer within "
                                               f"{self.settings.gary_terry_timeout_seconds:.0f} s") from exc
        except httpx.HTTPError as exc:
            raise GaryError(ErrorCode.SERVICE_UNAVAILABLE, f"terry request failed: {exc!r}") from exc
        finally:
            if path is not None:
                path.unlink(missing_ok=True)
        return self._result(resp)

    def _write_transfer(self, session_id: str, audio: bytes) -> Path | None:
        folder = self.settings.transfer_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"input_{session_id}_{secrets.token_hex(4)}.wav"
            path.write_bytes(audio)
        except OSError as exc:
            log.info("transfer folder %s not writable (%s): sending audio inline", folder, exc)
            return None
        return path

    def _result(self, resp: httpx.Response) -> tuple[bytes, dict[str, Any]]:
        try:
            data = resp.json()
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if resp.status_code != 200:
            message = data.get("error") or data.get("message") or resp.text[:300] or f"HTTP {resp.status_code}"
            code = data.get("code")
            err_code = ErrorCode(code) if code in ErrorCode.__members__ else ErrorCode.SERVICE_UNAVAILABLE
            raise GaryError(err_code, f"terry: {message}", http_status=502)
        text = data.get("audio")
        if isinstance(text, str) and text:
            if len(text) > MAX_RESULT_TEXT:
                raise GaryError(ErrorCode.DATA_TOO_LARGE, "Transformed audio is too large to send", http_status=502)
            try:
                raw = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise GaryError(ErrorCode.SERVICE_UNAVAILABLE, "terry returned invalid base64 audio") from exc
        elif isinstance(data.get("audio_file_path"), str):
            raw = self._read_transfer(data["audio_file_path"])
        else:
            raise GaryError(ErrorCode.SERVICE_UNAVAILABLE, "terry's reply carries no audio")
        metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        return raw, metadata

    def _read_transfer(self, name: str) -> bytes:
        """A result file is accepted only from inside TRANSFER_DIR (never an arbitrary path from a reply)."""
        root = self.settings.transfer_dir.resolve()
        path = Path(name).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise GaryError(ErrorCode.SERVICE_UNAVAILABLE, "terry's result file is outside the transfer folder")
        try:
            if path.stat().st_size > MAX_RESULT_TEXT:
                raise GaryError(ErrorCode.DATA_TOO_LARGE, "Transformed audio is too large to send", http_status=502)
            return path.read_bytes()
        finally:
            path.unlink(missing_ok=True)
