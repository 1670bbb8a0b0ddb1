// The gary web console: one more client of gary's Socket.IO contract (the same events gary4live sends and hears),
// plus jerry's loop generation, terry's variations and the machine's queue, relayed by gary at /console-api/*.
import { io } from "./vendor/socket.io.esm.min.js";
import { attachSelection, base64ToBytes, bytesToBase64, decodeAudio, drawWave, encodeWav } from "./audio.js";

const $ = (sel, root = document) => root.querySelector(sel);
const KEY_STORE = "gary.console.apiKey";
const SESSION_STORE = "gary.console.session";
const PENDING_STORE = "gary.console.pending";
const HEALTH_EVERY_MS = 5000;
const QUEUE_EVERY_MS = 3000;

// what each job request is acknowledged with and answered by (gary's event names)
const JOBS = {
  generate: { request: "process_audio_request", ack: "process_audio_received", result: "audio_processed", label: "generated" },
  continue: { request: "continue_music_request", ack: "continue_music_received", result: "music_continued", label: "continued" },
  retry: { request: "retry_music_request", ack: "retry_music_received", result: "music_retried", label: "retried" },
  transform: { request: "transform_audio_request", ack: "transform_audio_received", result: "audio_transformed", label: "transformed" },
};
const RESULT_KIND = Object.fromEntries(Object.entries(JOBS).map(([kind, j]) => [j.result, kind]));

const state = {
  config: null,
  sessionId: localStorage.getItem(SESSION_STORE) || null,
  takes: [],
  current: -1,
  pending: null, // {kind, started, maxProgress, lastProgress, acked}
  seenJobs: new Set(),
  busy: false,
  health: {},
  connected: false,
  everConnected: false,
  reconnects: 0,
  progressLog: [],
  selection: null,
  player: null,
  audioCtx: null,
};

// ---------------------------------------------------------------------------------------------- small UI helpers
function apiKey() { return localStorage.getItem(KEY_STORE) || ""; }
function keyHeaders() { const k = apiKey(); return k ? { "X-API-Key": k } : {}; }

function say(text) { $("#status").textContent = text; }
function showError(text) {
  const el = $("#error");
  el.textContent = text;
  el.hidden = !text;
}
function setProgress(p) {
  const v = Math.max(0, Math.min(100, Math.round(p)));
  $("#progress").value = v;
  $("#progress-text").textContent = `${v}%`;
}
function fmtSeconds(s) { return `${s.toFixed(2)} s`; }

async function getJSON(url, opts = {}) {
  const resp = await fetch(url, { ...opts, headers: { ...(opts.headers || {}), ...keyHeaders() } });
  let body = null;
  try { body = await resp.json(); } catch { body = null; }
  return { ok: resp.ok, status: resp.status, body };
}

function errorText(body, fallback) {
  if (body && typeof body === "object") return body.error || body.message || body.detail || fallback;
  return fallback;
}

// ---------------------------------------------------------------------------------------------- buttons state
function refreshButtons() {
  const take = currentTake();
  const hasSession = Boolean(state.sessionId);
  const busy = state.busy || Boolean(state.pending);
  const live = state.connected;
  const terryUp = state.health.terry !== "down";
  const set = (id, on) => { $(id).disabled = !on; };
  set("#generate", live && !busy && take && $("#model").value);
  set("#continue", live && !busy && take);
  set("#retry", live && !busy && hasSession && state.takes.some((t) => t.jobKind && t.jobKind !== "transform"));
  set("#undo", live && !busy && hasSession);
  set("#terry-undo", live && !busy && hasSession);
  set("#crop", live && !busy && take && cropRange() !== null);
  set("#transform", live && !busy && take && terryUp);
  set("#jerry-generate", !busy && state.health.jerry !== "down");
  $("#record").disabled = busy && !state.recorder;
  $("#session-label").textContent = hasSession ? `session ${state.sessionId.slice(0, 8)}` : "";
}

function setBusy(on) { state.busy = on; refreshButtons(); }

// ---------------------------------------------------------------------------------------------- takes
function currentTake() { return state.current >= 0 ? state.takes[state.current] : null; }

async function addTake(bytes, { label, kind, meta = "", jobKind = null, jobId = null, session = null } = {}) {
  let decoded;
  try {
    decoded = await decodeAudio(bytes);
  } catch (err) {
    showError(`${label}: ${err.message}`);
    return null;
  }
  const take = {
    index: state.takes.length, label, kind, meta, jobKind, jobId, session, bytes,
    channels: decoded.channels, sampleRate: decoded.sampleRate, duration: decoded.duration,
    url: URL.createObjectURL(new Blob([bytes], { type: "audio/wav" })),
  };
  state.takes.push(take);
  renderTake(take);
  selectTake(take.index);
  $("#no-takes").hidden = true;
  return take;
}

function renderTake(take) {
  const node = $("#take-template").content.firstElementChild.cloneNode(true);
  node.dataset.index = String(take.index);
  node.dataset.kind = take.kind;
  $(".select", node).textContent = `#${take.index + 1} ${take.label}`;
  $(".select", node).addEventListener("click", () => selectTake(take.index));
  $(".meta", node).textContent = [fmtSeconds(take.duration), `${take.channels.length} ch`, take.meta].filter(Boolean).join(" · ");
  const dl = $(".download", node);
  dl.href = take.url;
  dl.download = `gary-take-${take.index + 1}-${take.kind}.wav`;
  if (!isWav(take.bytes)) {
    // downloads are WAV: re-encode what the browser decoded (mp3/flac/ogg/aiff inputs)
    const wav = encodeWav(take.channels, take.sampleRate);
    dl.href = URL.createObjectURL(new Blob([wav], { type: "audio/wav" }));
  }
  $(".play", node).addEventListener("click", () => play(take, $(".loop", node).checked));
  $(".stop", node).addEventListener("click", stop);
  const canvas = $(".wave", node);
  attachSelection(canvas, (sel, done) => {
    if (state.current !== take.index) selectTake(take.index);
    state.selection = sel[1] - sel[0] > 0.001 ? sel : null;
    if (state.selection) {
      $("#crop-start").value = (sel[0] * take.duration).toFixed(2);
      $("#crop-end").value = (sel[1] * take.duration).toFixed(2);
    }
    draw(take);
    if (done) refreshButtons();
  });
  $("#takes").prepend(node);
  requestAnimationFrame(() => draw(take));
}

function isWav(bytes) {
  return bytes.length > 12 && String.fromCharCode(...bytes.subarray(0, 4)) === "RIFF" && String.fromCharCode(...bytes.subarray(8, 12)) === "WAVE";
}

function takeNode(index) { return $(`#takes .take[data-index="${index}"]`); }

function draw(take, head = null) {
  const node = takeNode(take.index);
  if (!node) return;
  const sel = state.current === take.index ? state.selection : null;
  drawWave($(".wave", node), take.channels, sel, head);
}

function selectTake(index) {
  const before = state.current;
  state.current = index;
  if (before !== index) {
    state.selection = null;
    const take = state.takes[index];
    $("#crop-start").value = "0";
    $("#crop-end").value = take.duration.toFixed(2);
    $("#crop-end").max = take.duration.toFixed(2);
    $("#crop-start").max = take.duration.toFixed(2);
  }
  for (const node of document.querySelectorAll("#takes .take")) {
    const on = Number(node.dataset.index) === index;
    node.classList.toggle("current", on);
    $(".select", node).setAttribute("aria-pressed", String(on));
  }
  for (const t of state.takes) draw(t);
  refreshButtons();
}

function cropRange() {
  const take = currentTake();
  if (!take) return null;
  const a = Number($("#crop-start").value);
  const b = Number($("#crop-end").value);
  if (!(b > a) || a < 0 || b > take.duration + 0.01) return null;
  if (a <= 0.0001 && b >= take.duration - 0.01) return null; // the whole take: nothing to crop
  return [a, Math.min(b, take.duration)];
}

// ---------------------------------------------------------------------------------------------- playback
function play(take, loop) {
  stop();
  state.audioCtx = state.audioCtx || new AudioContext();
  const ctx = state.audioCtx;
  const buffer = ctx.createBuffer(take.channels.length, take.channels[0].length, take.sampleRate);
  take.channels.forEach((ch, c) => buffer.copyToChannel(ch, c));
  const src = ctx.createBufferSource();
  src.buffer = buffer;
  src.loop = loop;
  src.connect(ctx.destination);
  const started = ctx.currentTime;
  src.start();
  const player = { src, take, started, raf: 0 };
  const tick = () => {
    if (state.player !== player) return;
    const t = (ctx.currentTime - started) % take.duration;
    draw(take, t / take.duration);
    player.raf = requestAnimationFrame(tick);
  };
  src.onended = () => { if (state.player === player) stop(); };
  state.player = player;
  player.raf = requestAnimationFrame(tick);
}

function stop() {
  const p = state.player;
  if (!p) return;
  state.player = null;
  cancelAnimationFrame(p.raf);
  try { p.src.stop(); } catch { /* already ended */ }
  draw(p.take);
}

// ---------------------------------------------------------------------------------------------- inputs
async function loadFile(file) {
  if (!file) return;
  showError("");
  const bytes = new Uint8Array(await file.arrayBuffer());
  const take = await addTake(bytes, { label: `input: ${file.name}`, kind: "input" });
  if (take) say(`Loaded ${file.name} (${fmtSeconds(take.duration)}). Pick a model and press generate.`);
}

async function toggleRecord() {
  const btn = $("#record");
  if (state.recorder) { state.recorder.stop(); return; }
  showError("");
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    showError(`microphone unavailable: ${err.message} (the page needs https or localhost and your permission)`);
    return;
  }
  const chunks = [];
  const rec = new MediaRecorder(stream);
  rec.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  rec.onstop = async () => {
    stream.getTracks().forEach((t) => t.stop());
    state.recorder = null;
    btn.textContent = "● record from microphone";
    btn.setAttribute("aria-pressed", "false");
    const raw = new Uint8Array(await new Blob(chunks).arrayBuffer());
    try {
      const d = await decodeAudio(raw);
      await addTake(encodeWav(d.channels, d.sampleRate), { label: "recording", kind: "input" });
      say("Recorded. Press generate to let gary continue it.");
    } catch (err) {
      showError(`recording: ${err.message}`);
    }
    refreshButtons();
  };
  state.recorder = rec;
  rec.start();
  btn.textContent = "■ stop recording";
  btn.setAttribute("aria-pressed", "true");
  say("Recording… press again to stop.");
}

async function jerryLoop() {
  showError("");
  const bpm = Number($("#jerry-bpm").value) || 120;
  let prompt = $("#jerry-prompt").value.trim() || "drums";
  if (!/\d+(\.\d+)?\s*bpm/i.test(prompt)) prompt = `${prompt} ${bpm}bpm`;
  const barsValue = $("#jerry-bars").value;
  const body = { prompt, loop_type: $("#jerry-type").value, steps: Number($("#jerry-steps").value) || 8,
    bars: barsValue === "auto" ? "auto" : Number(barsValue), return_format: "base64" };
  if (state.config && state.config.api_keys && !apiKey()) {
    showError("jerry needs an API key: type it at the top and save.");
    return;
  }
  setBusy(true);
  say(`jerry is making a loop (${prompt})…`);
  setProgress(0);
  $("#progress").removeAttribute("value"); // indeterminate: jerry reports no progress
  try {
    const r = await getJSON("/console-api/jerry/generate/loop", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    if (!r.ok || !r.body || !r.body.audio_base64) {
      throw new Error(r.status === 401 ? "jerry refused the API key (401): check it and save again."
        : `jerry: ${errorText(r.body, `HTTP ${r.status}`)}`);
    }
    const m = r.body.metadata || {};
    const loopInfo = m.bars ? `${m.detected_bpm} BPM · ${m.bars} bars · ${Number(m.loop_duration_seconds).toFixed(2)} s loop` : "";
    const take = await addTake(base64ToBytes(r.body.audio_base64), { label: "jerry loop", kind: "jerry", meta: loopInfo });
    setProgress(100);
    if (take) say(`jerry made a loop: ${loopInfo}. Press generate to let gary continue it.`);
  } catch (err) {
    setProgress(0);
    showError(err.message);
    say("jerry could not make the loop.");
  } finally {
    if ($("#progress").getAttribute("value") === null) $("#progress").value = 0;
    setBusy(false);
  }
}

// ---------------------------------------------------------------------------------------------- gary / terry jobs
function numberOr(id, fallback) {
  const v = $(id).value.trim();
  return v === "" || Number.isNaN(Number(v)) ? fallback : Number(v);
}

function generationParams() {
  const p = {
    model_name: $("#model").value,
    prompt_duration: numberOr("#prompt-duration", 6),
    top_k: numberOr("#top-k", 250),
    temperature: numberOr("#temperature", 1),
    cfg_coef: numberOr("#cfg", 3),
  };
  const seed = numberOr("#seed", -1);
  if (seed !== -1) p.seed = seed;
  const description = $("#description").value.trim();
  if (description) p.description = description;
  return p;
}

function startJob(kind, payload) {
  const job = JOBS[kind];
  showError("");
  setProgress(0);
  state.pending = { kind, started: Date.now(), maxProgress: 0, acked: false };
  persistPending();
  state.progressLog.push({ kind, progress: 0 });
  say(`Sending ${kind} to gary…`);
  $("#queue-line").textContent = "";
  refreshButtons();
  socket.emit(job.request, payload);
}

function persistPending() {
  if (state.pending) localStorage.setItem(PENDING_STORE, state.pending.kind);
  else localStorage.removeItem(PENDING_STORE);
}

function setSession(id) {
  if (!id || id === state.sessionId) return;
  state.sessionId = id;
  localStorage.setItem(SESSION_STORE, id);
  refreshButtons();
}

function currentAudioB64() { return bytesToBase64(currentTake().bytes); }

const actions = {
  generate() { startJob("generate", { audio_data: currentAudioB64(), ...generationParams() }); },
  continue() {
    // the selected take is what gets continued (it may be an older take you went back to)
    const payload = { audio_data: currentAudioB64(), ...generationParams() };
    if (state.sessionId) payload.session_id = state.sessionId;
    startJob("continue", payload);
  },
  retry() { startJob("retry", { session_id: state.sessionId, ...generationParams() }); },
  async transform() {
    const variation = $("#variation").value;
    const custom = $("#custom-prompt").value.trim();
    if (variation === state.config.custom_variation && !custom) {
      showError("the custom variation needs a prompt");
      return;
    }
    // ask terry first: a stopped terry must give a clear message now, not a job that waits on it
    setBusy(true);
    const h = await checkHealth("terry");
    setBusy(false);
    if (h !== "up" && h !== "warming") {
      showError(`terry (MelodyFlow) is not available: ${state.healthDetail.terry || "down"}. Transforms need it; gary's generate, continue and retry still work.`);
      say("Transform not sent.");
      return;
    }
    const payload = { audio_data: currentAudioB64(), variation, flowstep: Number($("#flowstep").value), solver: $("#solver").value };
    if (custom) payload.custom_prompt = custom;
    if (state.sessionId) payload.session_id = state.sessionId;
    startJob("transform", payload);
  },
  undo() {
    showError("");
    setBusy(true);
    say("Undoing the last change…");
    socket.emit("undo_transform_request", { session_id: state.sessionId });
  },
  crop() {
    const take = currentTake();
    const range = cropRange();
    if (!take || !range) return;
    const from = Math.floor(range[0] * take.sampleRate);
    const to = Math.min(take.channels[0].length, Math.ceil(range[1] * take.sampleRate));
    const wav = encodeWav(take.channels, take.sampleRate, from, to);
    showError("");
    setBusy(true);
    state.pendingCrop = { bytes: wav, range };
    say(`Cropping to ${range[0].toFixed(2)}–${range[1].toFixed(2)} s…`);
    const payload = { audio_data: bytesToBase64(wav) };
    if (state.sessionId) payload.session_id = state.sessionId;
    socket.emit("update_cropped_audio", payload);
  },
};

// ---------------------------------------------------------------------------------------------- socket
// the key travels in the handshake's auth payload (read at every (re)connect, so a newly typed key is used)
const socket = io({ path: "/socket.io", transports: ["websocket"], reconnection: true, reconnectionDelay: 500,
  reconnectionDelayMax: 3000, auth: (cb) => cb(apiKey() ? { api_key: apiKey() } : {}) });

socket.on("connect", () => {
  state.connected = true;
  $("#conn-banner").hidden = true;
  if (state.everConnected) state.reconnects += 1;
  state.everConnected = true;
  if (state.sessionId) socket.emit("verify_session", { session_id: state.sessionId });
  refreshButtons();
});
socket.on("disconnect", (reason) => {
  state.connected = false;
  const banner = $("#conn-banner");
  banner.textContent = `Connection to gary lost (${reason}); reconnecting… a running job keeps going and its result comes back.`;
  banner.hidden = false;
  refreshButtons();
});
socket.on("connect_error", (err) => {
  const banner = $("#conn-banner");
  // a refused handshake (no or wrong key) is not retried by socket.io: saving a key reconnects
  banner.textContent = socket.active ? `Cannot reach gary (${err.message}); retrying…`
    : `gary refused the connection: ${err.message}`;
  banner.hidden = false;
});

for (const [kind, job] of Object.entries(JOBS)) {
  socket.on(job.ack, (data) => {
    if (!state.pending || state.pending.kind !== kind) return;
    state.pending.acked = true;
    setSession(data.session_id);
    say(`gary accepted the ${kind} request.`);
  });
}

socket.on("queue_status", (q) => {
  if (!state.pending || (q.session_id && q.session_id !== state.sessionId)) return;
  const parts = [q.message];
  if (q.status === "queued" && q.estimated_time) parts.push(`(about ${q.estimated_time})`);
  $("#queue-line").textContent = parts.filter(Boolean).join(" ");
});

socket.on("progress_update", (d) => {
  if (!state.pending || (d.session_id && d.session_id !== state.sessionId)) return;
  const p = Number(d.progress) || 0;
  state.pending.maxProgress = Math.max(state.pending.maxProgress, p);
  state.progressLog.push({ kind: state.pending.kind, progress: p });
  setProgress(p);
  if (p > 0) say(p < 100 ? `${state.pending.kind}: ${p}%` : `${state.pending.kind}: 100%, receiving the audio…`);
});

for (const [event, kind] of Object.entries(RESULT_KIND)) {
  socket.on(event, (d) => onResult(kind, d));
}

async function onResult(kind, d) {
  if (d.job_id && state.seenJobs.has(d.job_id)) return; // a re-delivery of a result we already have
  if (d.job_id) state.seenJobs.add(d.job_id);
  setSession(d.session_id);
  const pending = state.pending;
  const progress = pending ? pending.maxProgress : 0;
  state.pending = null;
  persistPending();
  const meta = [];
  if (d.variation) meta.push(d.variation);
  if (d.seed !== undefined) meta.push(`seed ${d.seed}`);
  if (d.metadata && d.metadata.redelivered) meta.push("recovered after reconnect");
  const take = await addTake(base64ToBytes(d.audio_data), { label: JOBS[kind].label, kind, meta: meta.join(" · "),
    jobKind: kind, jobId: d.job_id || null, session: d.session_id });
  if (take) take.progress = Math.max(progress, 100);
  setProgress(100);
  $("#queue-line").textContent = "";
  say(`Done: ${JOBS[kind].label} take #${state.takes.length} (${take ? fmtSeconds(take.duration) : "?"}).`);
  refreshButtons();
}

socket.on("transform_undone", async (d) => {
  setSession(d.session_id);
  await addTake(base64ToBytes(d.audio_data), { label: "undo", kind: "undo", session: d.session_id });
  say("Undone: back to the audio before the last change.");
  setBusy(false);
});

socket.on("update_cropped_audio_complete", async (d) => {
  setSession(d.session_id);
  const crop = state.pendingCrop;
  state.pendingCrop = null;
  if (crop) {
    await addTake(crop.bytes, { label: "crop", kind: "crop", meta: `${crop.range[0].toFixed(2)}–${crop.range[1].toFixed(2)} s`,
      session: d.session_id });
  }
  say("Cropped: continue and transform now start from the cropped audio.");
  setBusy(false);
});

socket.on("session_verified", (d) => {
  if (d.session_id !== state.sessionId) return;
  if (!d.exists) {
    state.sessionId = null;
    localStorage.removeItem(SESSION_STORE);
    if (state.pending) {
      state.pending = null;
      persistPending();
      showError("The session no longer exists on gary (expired or cleaned up). Start again from a take.");
    }
    refreshButtons();
    return;
  }
  if (["queued", "processing", "running", "warming"].includes(d.status)) {
    if (!state.pending) {
      state.pending = { kind: localStorage.getItem(PENDING_STORE) || "generate", started: Date.now(), maxProgress: 0, acked: true };
    }
    state.pending.maxProgress = Math.max(state.pending.maxProgress, d.progress || 0);
    setProgress(d.progress || 0);
    say(`Reconnected: the ${state.pending.kind} job is still running (${d.progress || 0}%).`);
  } else if (d.status === "completed" && state.pending) {
    say("Reconnected: the job finished while away; fetching its result…");
  }
  refreshButtons();
});

socket.on("error", (d) => {
  const message = (d && d.message) || "gary reported an error";
  if (d && d.session_id && state.sessionId && d.session_id !== state.sessionId) return;
  showError(message);
  if (state.pending) {
    say(`The ${state.pending.kind} request failed.`);
    state.pending = null;
    persistPending();
  } else {
    say("Request failed.");
  }
  state.pendingCrop = null;
  setBusy(false);
});

// ---------------------------------------------------------------------------------------------- health + machine
state.healthDetail = {};

function healthState(name, r) {
  if (!r.reachable && r.configured === false) return ["off", name === "queue" ? "solo mode, no gateway" : "not configured"];
  if (!r.reachable) return ["down", r.error || "not reachable"];
  const b = r.body || {};
  if (name === "gary") return r.status_code === 200 ? ["up", b.demo ? "demo" : ""] : ["down", `degraded (redis ${b.redis}, store ${b.mongodb})`];
  if (name === "jerry") {
    if (r.status_code === 200) return ["up", b.demo ? "demo" : b.device || ""];
    return b.status === "loading" ? ["warming", "loading model"] : ["down", b.error || b.status || `HTTP ${r.status_code}`];
  }
  if (name === "terry") {
    if (r.status_code === 200) return ["up", b.model_loaded ? "model loaded" : "loads on first use"];
    return ["down", b.error || b.status || `HTTP ${r.status_code}`];
  }
  return r.status_code === 200 ? ["up", `${b.gpus ?? "?"} GPU`] : ["down", errorText(b, `HTTP ${r.status_code}`)];
}

async function checkHealth(name) {
  let result;
  try {
    const r = await getJSON(`/console-api/health/${name}`);
    result = r.ok ? healthState(name, r.body) : ["down", `HTTP ${r.status}`];
    state.healthBodies = { ...(state.healthBodies || {}), [name]: r.body };
  } catch {
    result = ["down", "gary did not answer"];
  }
  const [st, detail] = result;
  state.health[name] = st;
  state.healthDetail[name] = detail;
  const li = $(`#svc-${name}`);
  li.dataset.state = st;
  $("small", li).textContent = detail ? `· ${detail}` : "";
  li.title = `${name}: ${st}${detail ? ` (${detail})` : ""}`;
  const note = { terry: ["#terry-note", "Transforms are unavailable until it is back"],
    jerry: ["#jerry-note", "Loops are unavailable until it is back"] }[name];
  if (note) {
    const el = $(note[0]);
    el.hidden = st !== "down" && st !== "warming";
    el.textContent = st === "warming" ? `${name} is warming up (${detail}); try again in a moment.`
      : `${name} is not answering: ${detail}. ${note[1]}; everything else keeps working.`;
  }
  return st;
}

async function pollHealth() {
  await Promise.all(["gary", "jerry", "terry", "queue"].map(checkHealth));
  renderHealthCards();
  refreshButtons();
}

function renderHealthCards() {
  const cards = $("#health-cards");
  cards.textContent = "";
  const pick = {
    gary: (b) => ({ mode: b.queue === "solo" ? "solo" : "gateway", demo: b.demo, redis: b.redis, sessions: `${b.session_store} (${b.mongodb})`, gpu: b.pytorch }),
    jerry: (b) => ({ status: b.status, model: b.model, loaded: b.model_loaded, demo: b.demo, device: b.device, lease: b.queue_lease, waiting: b.pending_requests }),
    terry: (b) => ({ status: b.status, model: b.model, loaded: b.model_loaded, demo: b.demo, device: b.device, queue: b.queue, busy: b.busy }),
    queue: (b) => ({ status: b.status, redis: b.redis, gpus: b.gpus, lanes: (b.lanes || []).join(", ") }),
  };
  for (const name of ["gary", "jerry", "terry", "queue"]) {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.service = name;
    const h = document.createElement("h3");
    h.textContent = `${name} · ${state.health[name] || "?"}`;
    card.append(h);
    const body = (state.healthBodies || {})[name];
    const dl = document.createElement("dl");
    const rows = body && body.body && typeof body.body === "object" ? pick[name](body.body) : { error: state.healthDetail[name] };
    for (const [k, v] of Object.entries(rows)) {
      if (v === undefined || v === null || v === "") continue;
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = String(v);
      dl.append(dt, dd);
    }
    card.append(dl);
    cards.append(card);
  }
}

async function refreshQueue() {
  const note = $("#machine-note");
  if (state.config && state.config.api_keys && !apiKey()) {
    note.textContent = "The queue needs an API key: type it at the top and save.";
    return;
  }
  let r;
  try {
    r = await getJSON(`/console-api/queue${state.sessionId ? `?mine=${encodeURIComponent(state.sessionId)}` : ""}`);
  } catch {
    note.textContent = "gary did not answer.";
    return;
  }
  if (!r.ok) {
    note.textContent = r.status === 401 ? "The queue gateway refused the API key (401): check it and save again."
      : `Queue unavailable: ${errorText(r.body, `HTTP ${r.status}`)}`;
    return;
  }
  const q = r.body;
  if (q.mode === "solo") {
    note.textContent = "Solo mode: gary runs its jobs in-process, there is no queue gateway.";
    return;
  }
  note.textContent = `Updated ${new Date().toLocaleTimeString()}.`;
  const gpus = $("#gpus");
  gpus.textContent = "";
  for (const g of q.gpus || []) {
    const pct = g.capacity_mb ? Math.min(100, (100 * g.granted_mb) / g.capacity_mb) : 0;
    const label = document.createElement("div");
    label.className = "bar-label";
    label.textContent = `GPU ${g.id}: ${g.granted_mb} MB granted of ${g.capacity_mb} MB`;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", String(g.capacity_mb));
    bar.setAttribute("aria-valuenow", String(g.granted_mb));
    bar.setAttribute("aria-label", label.textContent);
    const fill = document.createElement("span");
    fill.style.width = `${pct}%`;
    bar.append(fill);
    gpus.append(label, bar);
  }
  if (!(q.gpus || []).length) gpus.textContent = "No GPU registered with the gateway.";
  const lanes = $("#lanes");
  const busy = Object.entries(q.lanes || {}).filter(([, l]) => l.queued || l.active);
  lanes.textContent = busy.length
    ? `waiting: ${busy.map(([n, l]) => `${n} ${l.queued} queued / ${l.active} running${l.mine_waiting ? " (yours waiting)" : ""}`).join(" · ")}`
    : "No task waiting.";
  const tbody = $("#leases tbody");
  tbody.textContent = "";
  for (const l of q.leases || []) {
    const tr = document.createElement("tr");
    if (l.mine) tr.className = "mine";
    const cells = [l.lane, `${l.session_id || "?"}${l.mine ? " (you)" : ""}${l.resident ? " · resident" : ""}`, l.client || "-",
      l.model || "-", `${l.vram_mb} MB`, l.state || "-"];
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.append(td);
    }
    tbody.append(tr);
  }
}

// ---------------------------------------------------------------------------------------------- start-up
async function loadModels() {
  const sel = $("#model");
  const r = await getJSON("/api/models");
  if (!r.ok) { showError("could not load the model list from gary"); return; }
  for (const [size, entries] of Object.entries(r.body.models)) {
    const group = document.createElement("optgroup");
    group.label = size;
    for (const e of entries) {
      const options = e.type === "group" ? e.checkpoints.map((c) => [c.path, `${e.name} · epoch ${c.epoch}`]) : [[e.path, e.name]];
      for (const [value, text] of options) group.append(new Option(text, value));
    }
    sel.append(group);
  }
}

async function loadConfig() {
  const r = await getJSON("/console-api/config");
  state.config = r.body;
  $("#demo-banner").hidden = !r.body.demo;
  const sel = $("#variation");
  for (const name of r.body.variations) sel.append(new Option(name.replaceAll("_", " "), name));
  sel.append(new Option("custom (your prompt)", r.body.custom_variation));
  $("#flowstep").value = String(r.body.default_flowstep);
  $("#flowstep-out").textContent = String(r.body.default_flowstep);
  if (r.body.api_keys && !apiKey()) say("API keys are on: type your key at the top (it stays in this browser).");
}

function wire() {
  $("#file-input").addEventListener("change", (e) => loadFile(e.target.files[0]));
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); loadFile(e.dataTransfer.files[0]); });
  $("#record").addEventListener("click", toggleRecord);
  $("#jerry-generate").addEventListener("click", jerryLoop);
  for (const name of ["generate", "continue", "retry", "undo", "crop", "transform"]) {
    $(`#${name}`).addEventListener("click", () => actions[name]());
  }
  $("#terry-undo").addEventListener("click", () => actions.undo());
  $("#variation").addEventListener("change", () => { $("#custom-row").hidden = $("#variation").value !== state.config.custom_variation; });
  $("#flowstep").addEventListener("input", () => { $("#flowstep-out").textContent = $("#flowstep").value; });
  for (const id of ["#crop-start", "#crop-end"]) {
    $(id).addEventListener("input", () => {
      const take = currentTake();
      const range = cropRange();
      state.selection = take && range ? [range[0] / take.duration, range[1] / take.duration] : null;
      if (take) draw(take);
      refreshButtons();
    });
  }
  $("#model").addEventListener("change", refreshButtons);
  $("#api-key").value = apiKey();
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const k = $("#api-key").value.trim();
    if (k) localStorage.setItem(KEY_STORE, k); else localStorage.removeItem(KEY_STORE);
    say(k ? "API key saved in this browser." : "API key cleared.");
    if (!socket.connected) socket.connect();
    refreshQueue();
    pollHealth();
  });
  $("#machine-refresh").addEventListener("click", refreshQueue);
  window.addEventListener("resize", () => state.takes.forEach((t) => draw(t)));
}

async function main() {
  wire();
  refreshButtons();
  await Promise.all([loadConfig(), loadModels()]);
  refreshButtons();
  pollHealth();
  refreshQueue();
  setInterval(pollHealth, HEALTH_EVERY_MS);
  setInterval(refreshQueue, QUEUE_EVERY_MS);
  if (localStorage.getItem(PENDING_STORE) && state.sessionId) say("Resuming the session you left…");
}

// for tests and the curious: the page's state, read-only by convention
window.garyConsole = { state, socket, ready: main() };
