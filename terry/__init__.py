"""terry: the MelodyFlow transform API (:8002), `terry-server [--demo]`.

`POST /transform` (JSON): `session_id`, `variation` (a preset from `GET /variations`, or any name with
`custom_prompt`), `audio_file_path` (inside TRANSFER_DIR only) or `audio` (base64 of any audio file), optional
`flowstep` in (0, 1) (default 0.12; lower = more change), `solver` euler|midpoint, `custom_prompt`, `seed`
(-1/None = random; echoed back), `steps`, `output_sample_rate`, and gary's `lease_id`/`fencing_token`.
200 -> `{"audio", "message": "Audio processed successfully", "session_id", "seed", "metadata"}` where `audio` is a
base64 WAV: stereo, 32-bit float, at the input's sample rate (or `output_sample_rate`), exactly as many frames as
the input; processing happens at the codec's 48 kHz (TERRY_LEGACY_32K restores the original's 32 kHz quirk).
Errors -> `{"error", "code"}` with 400 (bad request), 401 (API key), 403 (path outside the transfer folder),
404 (file missing), 413 (too large), 422 (audio too short/long), 503 (model cannot load, GPU out of memory, queue
gateway unavailable), 504 (no GPU lease in time).

Progress goes to gary's clients as the original's: Redis `status:`/`progress:`/`queue_status:` keys and Socket.IO
`progress_update`/`queue_status` emitted into the session's room through the shared Redis channel.
"""
