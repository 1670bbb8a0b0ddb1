// A musician's whole gary4live session, with the client library and options the Max for Live device uses
// (socket.io-client v4, websocket transport only, path /socket.io, endless reconnect). Usage:
//   node gary4live_session.mjs <base-url> <myBuffer.wav> <cropped.wav> <model-name> <prompt-duration> <rounds>
// Each round: bang -> continue -> retry -> transform (accordion_folk, flowstep 0.13) -> undo -> crop -> bang again
// (after cleanup_session_request, as the device does before every bang) -> reset. Then a reconnect in the middle of
// a generation: a fresh connection sends verify_session and must still get the result.
// Prints one JSON line per step {step, seconds, ...} and per checked event, and a final {"done": true}; exits 2 on a
// server `error`, 3 on a timeout, 5 on a broken contract.
import { readFileSync } from "node:fs";
import { io } from "socket.io-client";

const [base, bufferPath, croppedPath, modelName, promptArg, roundsArg] = process.argv.slice(2);
const myBuffer = readFileSync(bufferPath).toString("base64");
const cropped = readFileSync(croppedPath).toString("base64");
const promptDuration = Number(promptArg ?? 6);
const rounds = Number(roundsArg ?? 3);
const STEP_TIMEOUT_MS = 120000;

const print = (obj) => console.log(JSON.stringify(obj));
const fail = (code, why) => { print({ failed: why }); console.error(why); process.exit(code); };
const contract = (ok, why) => { if (!ok) fail(5, `contract: ${why}`); };

function connect() {
  const socket = io(base, { path: "/socket.io", transports: ["websocket"], reconnection: true, forceNew: true });
  socket.on("connect_error", (e) => fail(4, `connect_error ${e.message}`));
  // What gary4live reads from these events, checked on every one of them.
  socket.on("queue_status", (d) => {
    contract(Number.isInteger(d.position) && Number.isInteger(d.total_queued) && typeof d.estimated_seconds === "number"
      && typeof d.message === "string", `queue_status without position/total_queued/estimated_seconds: ${JSON.stringify(d)}`);
    print({ event: "queue_status", status: d.status, position: d.position });
  });
  socket.on("progress_update", (d) => {
    contract(typeof d.progress === "number" && d.progress >= 0 && d.progress <= 100, `bad progress ${JSON.stringify(d)}`);
  });
  socket.on("error", (d) => {
    contract(typeof d?.message === "string", `error without a string message: ${JSON.stringify(d)}`);
    fail(2, `server error: ${JSON.stringify(d)}`);
  });
  return socket;
}

const next = (socket, event, where = () => true) => new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`timeout waiting for ${event}`)), STEP_TIMEOUT_MS);
  const handler = (data) => {
    if (!where(data)) return;
    clearTimeout(timer);
    socket.off(event, handler);
    resolve(data);
  };
  socket.on(event, handler);
});

async function step(name, fn) {
  const started = performance.now();
  try {
    const out = await fn();
    print({ step: name, seconds: (performance.now() - started) / 1000, ...(out?.report ?? {}) });
    return out;
  } catch (e) {
    fail(3, `${name}: ${e.message}`);
  }
}

const audioOf = (d, event) => { contract(typeof d.audio_data === "string" && d.audio_data.length > 0, `${event} has no audio`); return d; };

const socket = connect();
await new Promise((resolve) => socket.once("connect", resolve));
let previous = null;
for (let round = 1; round <= rounds; round++) {
  const tag = (s) => `${s} #${round}`;
  const bang = async () => {
    if (previous) socket.emit("cleanup_session_request", { session_id: previous });
    const result = next(socket, "audio_processed");
    socket.emit("process_audio_request", { audio_data: myBuffer, model_name: modelName, prompt_duration: promptDuration });
    const d = audioOf(await result, "audio_processed");
    contract(d.session_id && d.session_id !== previous, "bang must start a new session");
    previous = d.session_id;
    return { data: d, report: { session_id: d.session_id } };
  };
  const { data: processed } = await step(tag("bang"), bang);
  const sid = processed.session_id;
  const { data: continued } = await step(tag("continue"), async () => {
    const result = next(socket, "music_continued", (d) => d.session_id === sid);
    socket.emit("continue_music_request", { audio_data: processed.audio_data, model_name: modelName, session_id: sid,
      prompt_duration: promptDuration });
    return { data: audioOf(await result, "music_continued") };
  });
  const { data: retried } = await step(tag("retry"), async () => {
    const result = next(socket, "music_retried", (d) => d.session_id === sid);
    socket.emit("retry_music_request", { session_id: sid, model_name: modelName, prompt_duration: promptDuration });
    return { data: audioOf(await result, "music_retried") };
  });
  contract(retried.audio_data.length === continued.audio_data.length, "retry redoes the continue at the same length");
  const { data: transformed } = await step(tag("transform"), async () => {
    const result = next(socket, "audio_transformed", (d) => d.session_id === sid);
    socket.emit("transform_audio_request", { audio_data: retried.audio_data, variation: "accordion_folk",
      session_id: sid, flowstep: 0.13 });
    const d = audioOf(await result, "audio_transformed");
    contract(d.variation === "accordion_folk", `variation echoed: ${d.variation}`);
    return { data: d };
  });
  contract(transformed.audio_data !== retried.audio_data, "the transform changed the audio");
  await step(tag("undo"), async () => {
    const result = next(socket, "transform_undone", (d) => d.session_id === sid);
    socket.emit("undo_transform_request", { session_id: sid });
    const d = audioOf(await result, "transform_undone");
    contract(d.audio_data === retried.audio_data, "undo gives back the transform's input, byte for byte");
    return { data: d };
  });
  await step(tag("crop"), async () => {
    const result = next(socket, "update_cropped_audio_complete", (d) => d.session_id === sid);
    socket.emit("update_cropped_audio", { session_id: sid, audio_data: cropped });
    return { data: await result };
  });
  await step(tag("bang again"), bang);
  await step(tag("reset"), async () => {
    const result = next(socket, "cleanup_complete", (d) => d.session_id === previous);
    socket.emit("cleanup_session_request", { session_id: previous });
    await result;
    previous = null;
    return {};
  });
}

// Reconnect in the middle of a generation: Ableton's device reloads, the network drops, the laptop sleeps.
await step("reconnect mid-generation", async () => {
  const accepted = next(socket, "process_audio_received");
  socket.emit("process_audio_request", { audio_data: myBuffer, model_name: modelName, prompt_duration: promptDuration });
  const { session_id: sid } = await accepted;
  await next(socket, "queue_status", (d) => d.session_id === sid);
  socket.disconnect();
  const again = connect();
  await new Promise((resolve) => again.once("connect", resolve));
  const verified = next(again, "session_verified", (d) => d.session_id === sid);
  const result = next(again, "audio_processed", (d) => d.session_id === sid);
  again.emit("verify_session", { session_id: sid });
  const v = await verified;
  contract(v.exists === true, "the session survives the reconnect");
  audioOf(await result, "audio_processed");
  again.close();
  return { report: { verified_status: v.status } };
});
print({ done: true });
process.exit(0);
