// Replays gary4live's Socket.IO flow with the same client library and options the Max for Live device uses
// (socket.io-client v4, websocket transport only, path /socket.io). Usage:
//   node gary4live.mjs <base-url> <wav-file> <model-name> [prompt-duration]
// Prints one JSON line per received event and a final {"done": true, ...} summary; exits non-zero on error/timeout.
import { readFileSync } from "node:fs";
import { io } from "socket.io-client";

const [base, wavPath, modelName, promptArg] = process.argv.slice(2);
const audio = readFileSync(wavPath).toString("base64");
const promptDuration = Number(promptArg ?? 6);
const log = (event, data) => {
  const copy = { ...data };
  if (typeof copy.audio_data === "string") copy.audio_data_len = copy.audio_data.length, delete copy.audio_data;
  console.log(JSON.stringify({ event, data: copy }));
};
const socket = io(base, { path: "/socket.io", transports: ["websocket"], reconnection: true });
const timer = setTimeout(() => { console.error("timeout"); process.exit(3); }, 240000);
const once = (event) => new Promise((resolve) => socket.once(event, resolve));

for (const ev of ["queue_status", "progress_update", "process_audio_received", "continue_music_received",
  "retry_music_received", "update_cropped_audio_complete", "transform_undone"]) {
  socket.on(ev, (d) => log(ev, d));
}
socket.on("error", (d) => { log("error", d); console.error("server error", JSON.stringify(d)); process.exit(2); });
socket.on("connect_error", (e) => { console.error("connect_error", e.message); process.exit(4); });

await once("connect");
socket.emit("process_audio_request", { audio_data: audio, model_name: modelName, prompt_duration: promptDuration });
const processed = await once("audio_processed");
log("audio_processed", processed);
const sid = processed.session_id;

socket.emit("continue_music_request", { audio_data: processed.audio_data, model_name: modelName,
  session_id: sid, prompt_duration: promptDuration });
const continued = await once("music_continued");
log("music_continued", continued);

socket.emit("retry_music_request", { session_id: sid, model_name: modelName, prompt_duration: promptDuration });
const retried = await once("music_retried");
log("music_retried", retried);

socket.emit("update_cropped_audio", { session_id: sid, audio_data: processed.audio_data });
await once("update_cropped_audio_complete");

socket.emit("undo_transform_request", { session_id: sid });
const undone = await once("transform_undone");

socket.emit("cleanup_session_request", { session_id: sid });
clearTimeout(timer);
console.log(JSON.stringify({ done: true, session_id: sid,
  lengths: [processed.audio_data.length, continued.audio_data.length, retried.audio_data.length, undone.audio_data.length] }));
socket.close();
process.exit(0);
