// Audio helpers of the console: base64, decoding (with an AIFF reader: browsers decode wav/mp3/flac/ogg but not
// aiff), 16-bit WAV encoding (downloads, crops, recordings) and the waveform drawing with a drag-to-select region.

export function bytesToBase64(bytes) {
  let out = "";
  const step = 0x8000;
  for (let i = 0; i < bytes.length; i += step) out += String.fromCharCode.apply(null, bytes.subarray(i, i + step));
  return btoa(out);
}

export function base64ToBytes(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

const DECODE_RATE = 44100;

/** Decode file bytes into {channels: Float32Array[], sampleRate, duration}; throws with a readable message. */
export async function decodeAudio(bytes) {
  const aiff = readAiff(bytes);
  if (aiff) return aiff;
  const ctx = new OfflineAudioContext(1, 1, DECODE_RATE);
  let buffer;
  try {
    buffer = await ctx.decodeAudioData(bytes.slice().buffer);
  } catch {
    throw new Error("this browser cannot decode that audio");
  }
  const channels = [];
  for (let c = 0; c < buffer.numberOfChannels; c++) channels.push(buffer.getChannelData(c));
  return { channels, sampleRate: buffer.sampleRate, duration: buffer.duration };
}

function readAiff(bytes) {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = (o) => String.fromCharCode(bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]);
  if (bytes.length < 12 || tag(0) !== "FORM" || (tag(8) !== "AIFF" && tag(8) !== "AIFC")) return null;
  let comm = null;
  let ssnd = null;
  for (let o = 12; o + 8 <= bytes.length;) {
    const id = tag(o);
    const size = v.getUint32(o + 4);
    if (id === "COMM") comm = o + 8;
    if (id === "SSND") ssnd = o + 8;
    o += 8 + size + (size & 1);
  }
  if (comm === null || ssnd === null) throw new Error("AIFF file without COMM/SSND chunks");
  if (tag(8) === "AIFC" && !["NONE", "twos"].includes(tag(comm + 18))) throw new Error("compressed AIFF-C is not supported");
  const nch = v.getUint16(comm);
  const frames = v.getUint32(comm + 2);
  const bits = v.getUint16(comm + 6);
  const exp = v.getUint16(comm + 8) & 0x7fff;
  const mant = v.getUint32(comm + 10) * 2 ** 32 + v.getUint32(comm + 14);
  const sampleRate = Math.round(mant * 2 ** (exp - 16383 - 63));
  const width = Math.ceil(bits / 8);
  const start = ssnd + 8 + v.getUint32(ssnd);
  const channels = Array.from({ length: nch }, () => new Float32Array(frames));
  const scale = 2 ** (width * 8 - 1);
  for (let f = 0; f < frames; f++) {
    for (let c = 0; c < nch; c++) {
      const o = start + (f * nch + c) * width;
      if (o + width > bytes.length) break;
      let s = 0;
      for (let b = 0; b < width; b++) s = s * 256 + bytes[o + b];
      if (s >= scale) s -= 2 * scale;
      channels[c][f] = s / scale;
    }
  }
  return { channels, sampleRate, duration: frames / sampleRate };
}

/** 16-bit PCM WAV bytes of the frames [from, to) of decoded channels. */
export function encodeWav(channels, sampleRate, from = 0, to = channels[0].length) {
  const nch = channels.length;
  const frames = Math.max(0, to - from);
  const data = frames * nch * 2;
  const out = new DataView(new ArrayBuffer(44 + data));
  const put = (o, s) => { for (let i = 0; i < s.length; i++) out.setUint8(o + i, s.charCodeAt(i)); };
  put(0, "RIFF"); out.setUint32(4, 36 + data, true); put(8, "WAVE"); put(12, "fmt ");
  out.setUint32(16, 16, true); out.setUint16(20, 1, true); out.setUint16(22, nch, true);
  out.setUint32(24, sampleRate, true); out.setUint32(28, sampleRate * nch * 2, true);
  out.setUint16(32, nch * 2, true); out.setUint16(34, 16, true); put(36, "data"); out.setUint32(40, data, true);
  let o = 44;
  for (let f = from; f < to; f++) {
    for (let c = 0; c < nch; c++) {
      const s = Math.max(-1, Math.min(1, channels[c][f]));
      out.setInt16(o, s < 0 ? s * 0x8000 : s * 0x7fff, true);
      o += 2;
    }
  }
  return new Uint8Array(out.buffer);
}

/** Draw min/max columns of the mix, the selection [a, b] (fractions) and the play head (fraction or null). */
export function drawWave(canvas, channels, selection, head) {
  const dpr = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const height = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== width) canvas.width = width;
  if (canvas.height !== height) canvas.height = height;
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, width, height);
  if (selection && selection[1] > selection[0]) {
    g.fillStyle = "rgba(240,169,59,0.22)";
    g.fillRect(selection[0] * width, 0, (selection[1] - selection[0]) * width, height);
  }
  const n = channels[0].length;
  const per = Math.max(1, Math.floor(n / width));
  const mid = height / 2;
  g.fillStyle = "#8fb8ff";
  for (let x = 0; x < width; x++) {
    const from = Math.floor((x * n) / width);
    let lo = 0;
    let hi = 0;
    for (let i = from; i < Math.min(n, from + per); i += Math.max(1, Math.floor(per / 64))) {
      let s = 0;
      for (const ch of channels) s += ch[i];
      s /= channels.length;
      if (s < lo) lo = s;
      if (s > hi) hi = s;
    }
    g.fillRect(x, mid - hi * mid, 1, Math.max(1, (hi - lo) * mid));
  }
  if (head !== null && head !== undefined) {
    g.fillStyle = "#f0a93b";
    g.fillRect(head * width, 0, Math.max(1, dpr), height);
  }
}

/** Pointer drag on a canvas reports a selection as fractions [a, b] (a < b) through `onChange`. */
export function attachSelection(canvas, onChange) {
  let anchor = null;
  const at = (e) => {
    const r = canvas.getBoundingClientRect();
    return Math.max(0, Math.min(1, (e.clientX - r.left) / r.width));
  };
  canvas.addEventListener("pointerdown", (e) => {
    anchor = at(e);
    canvas.setPointerCapture(e.pointerId);
    onChange([anchor, anchor], false);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (anchor === null) return;
    const x = at(e);
    onChange([Math.min(anchor, x), Math.max(anchor, x)], false);
  });
  const end = (e) => {
    if (anchor === null) return;
    const x = at(e);
    onChange([Math.min(anchor, x), Math.max(anchor, x)], true);
    anchor = null;
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
}
