"use strict";
// PercepNet live page: microphone -> server (WebRTC) -> cleaned audio back.
// Talks to POST /offer, a "control" data channel and DELETE /whip/{id}.
// window.percepnet exposes join/leave/record/setEnabled/setLimit for automated tests.

const $ = (id) => document.getElementById(id);
const SAMPLE_RATE = 48000;
// The slider's top position means "no attenuation limit"; the server says where that is
// (maxAttenuationDb in /config.json, the largest limit it takes).
const noLimit = () => Number($("limit").max);

const state = {
  pc: null, channel: null, mic: null, remote: null, session: null, location: null,
  ctx: null, analyserIn: null, analyserOut: null, outSource: null,
  vad: [], stats: null, raf: 0, statsTimer: 0, playout: null,
};

const params = new URLSearchParams(location.search);
$("token").value = params.get("token") || localStorage.getItem("percepnet-token") || "";

function setStatus(text, cls) {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + (cls || "idle");
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const token = $("token").value.trim();
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function listDevices() {
  const select = $("device");
  const current = select.value;
  const devices = await navigator.mediaDevices.enumerateDevices();
  select.innerHTML = "";
  const def = new Option("default microphone", "");
  select.add(def);
  for (const d of devices) {
    if (d.kind === "audioinput" && d.deviceId && d.deviceId !== "default") {
      select.add(new Option(d.label || "microphone " + (select.length), d.deviceId));
    }
  }
  select.value = current;
}

function waitIceGathering(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") { cleanup(); resolve(); } };
    const timer = setTimeout(() => { cleanup(); resolve(); }, ms);
    const cleanup = () => { clearTimeout(timer); pc.removeEventListener("icegatheringstatechange", done); };
    pc.addEventListener("icegatheringstatechange", done);
  });
}

async function join() {
  if (leaving) await leaving;
  if (state.pc) return;
  $("join").disabled = true;
  setStatus("connecting", "idle");
  try {
    localStorage.setItem("percepnet-token", $("token").value.trim());
    const deviceId = $("device").value;
    state.mic = await navigator.mediaDevices.getUserMedia({
      audio: {
        deviceId: deviceId ? { exact: deviceId } : undefined,
        // the browser's own processing would change the signal under test
        echoCancellation: false, noiseSuppression: false, autoGainControl: false,
      },
    });
    listDevices().catch(() => {});
    const cfgResp = await fetch("/config.json", { headers: headers() });
    if (!cfgResp.ok) throw new Error("config: HTTP " + cfgResp.status);
    const cfg = await cfgResp.json();
    if (cfg.maxAttenuationDb) {
      const atTop = Number($("limit").value) >= noLimit();
      $("limit").max = cfg.maxAttenuationDb;
      if (atTop) $("limit").value = cfg.maxAttenuationDb;
      showLimit();
    }
    const pc = new RTCPeerConnection({ iceServers: cfg.iceServers || [] });
    state.pc = pc;
    pc.addTransceiver(state.mic.getAudioTracks()[0], { direction: "sendrecv", streams: [state.mic] });
    const channel = pc.createDataChannel("control");
    state.channel = channel;
    channel.onopen = sendControls;
    channel.onmessage = (e) => { try { onStats(JSON.parse(e.data)); } catch (_) { /* ignore */ } };
    pc.ontrack = (e) => attachRemote(e.track);
    pc.onconnectionstatechange = () => {
      const s = pc.connectionState;
      setStatus(s, s === "connected" ? "live" : (s === "failed" ? "error" : "idle"));
      if (s === "failed" || s === "closed") leave();
    };
    await pc.setLocalDescription(await pc.createOffer());
    await waitIceGathering(pc, 3000); // the server does not trickle: send every candidate
    const resp = await fetch("/offer", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
    });
    if (!resp.ok) {
      let msg = "HTTP " + resp.status;
      try { msg += ": " + (await resp.json()).error; } catch (_) { /* not JSON */ }
      throw new Error(msg);
    }
    const answer = await resp.json();
    state.session = answer.session;
    state.location = answer.location;
    $("session").textContent = answer.id || "–"; // public id: answer.session is the secret key
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    setupAudio();
    $("leave").disabled = false;
    $("enabled").disabled = false;
    $("limit").disabled = false;
    state.statsTimer = setInterval(pollRtt, 1000);
  } catch (err) {
    setStatus("error: " + err.message, "error");
    await leave(true);
  }
}

function attachRemote(track) {
  state.remote = new MediaStream([track]);
  // Chromium decodes a remote track only when a media element plays it.
  $("remote").srcObject = state.remote;
  if (state.ctx) connectOutput();
}

function setupAudio() {
  if (!state.ctx) state.ctx = new AudioContext({ sampleRate: SAMPLE_RATE });
  state.ctx.resume();
  state.analyserIn = makeAnalyser(state.ctx.createMediaStreamSource(state.mic));
  if (state.remote) connectOutput();
  cancelAnimationFrame(state.raf);
  state.raf = requestAnimationFrame(draw);
}

function connectOutput() {
  state.outSource = state.ctx.createMediaStreamSource(state.remote);
  state.analyserOut = makeAnalyser(state.outSource);
}

function makeAnalyser(source) {
  const a = state.ctx.createAnalyser();
  a.fftSize = 1024;
  a.smoothingTimeConstant = 0;
  source.connect(a);
  return a;
}

function levelDb(analyser) {
  const buf = new Float32Array(analyser.fftSize);
  analyser.getFloatTimeDomainData(buf);
  let sum = 0;
  for (const v of buf) sum += v * v;
  return 10 * Math.log10(sum / buf.length + 1e-12);
}

function drawSpectrogram(canvas, analyser) {
  const g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  g.drawImage(canvas, -2, 0); // scroll left by two pixels
  const bins = new Float32Array(analyser.frequencyBinCount);
  analyser.getFloatFrequencyData(bins);
  const maxBin = Math.floor(bins.length * 12000 / (SAMPLE_RATE / 2)); // show 0..12 kHz
  for (let y = 0; y < h; y++) {
    const frac = 1 - y / h;
    const bin = Math.min(maxBin - 1, Math.floor(maxBin * (Math.pow(40, frac) - 1) / 39));
    const db = Math.max(-110, Math.min(-20, bins[bin]));
    const t = (db + 110) / 90;
    g.fillStyle = `hsl(${260 - 220 * t}, 90%, ${8 + 55 * t}%)`;
    g.fillRect(w - 2, y, 2, 1);
  }
}

function drawVad() {
  const c = $("vad"), g = c.getContext("2d");
  g.fillStyle = "#000";
  g.fillRect(0, 0, c.width, c.height);
  g.strokeStyle = "#4cc38a";
  g.beginPath();
  state.vad.forEach((v, i) => {
    const x = c.width - (state.vad.length - i) * 2, y = c.height - v * (c.height - 4) - 2;
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
}

function draw() {
  if (state.analyserIn) {
    drawSpectrogram($("spec-in"), state.analyserIn);
    const l = levelDb(state.analyserIn);
    $("meter-in").value = l;
    $("level-in").textContent = l.toFixed(0) + " dBFS";
  }
  if (state.analyserOut) {
    drawSpectrogram($("spec-out"), state.analyserOut);
    const l = levelDb(state.analyserOut);
    $("meter-out").value = l;
    $("level-out").textContent = l.toFixed(0) + " dBFS";
  }
  drawVad();
  state.raf = requestAnimationFrame(draw);
}

function onStats(msg) {
  if (msg.type !== "stats") return;
  state.stats = msg;
  if (msg.voice_activity !== null && msg.voice_activity !== undefined) {
    state.vad.push(msg.voice_activity);
    if (state.vad.length > 240) state.vad.shift();
    $("vad-value").textContent = msg.voice_activity.toFixed(2);
  }
  $("latency").textContent = msg.added_latency_ms.toFixed(1) + " ms" +
    (msg.enabled ? "" : " (bypassed: delay kept)");
  $("cpu").textContent = msg.cpu_percent.toFixed(1) + " % of a core (last frame " +
    msg.last_frame_ms.toFixed(2) + " ms)";
  $("frames").textContent = `${msg.frames_processed} / ${msg.frames_bypassed} / ${msg.frames_failed}`;
  if (msg.packets_lost !== undefined) {
    $("loss").textContent = `${msg.packets_lost} / ${msg.packets_late}`;
  }
}

async function pollRtt() {
  const pc = state.pc;
  if (!pc) return;
  const report = await pc.getStats();
  if (state.pc !== pc) return; // left meanwhile: the views are reset
  report.forEach((s) => {
    if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
      $("rtt").textContent = (1000 * s.currentRoundTripTime).toFixed(1) + " ms";
    }
    // The browser's own jitter buffer: mean delay of the samples it played since the
    // last poll (the server relays without holding audio for playout).
    if (s.type === "inbound-rtp" && s.kind === "audio" && s.jitterBufferEmittedCount) {
      const last = state.playout || { delay: 0, count: 0 };
      const count = s.jitterBufferEmittedCount - last.count;
      if (count > 0) {
        const ms = (1000 * (s.jitterBufferDelay - last.delay)) / count;
        $("playout").textContent = ms.toFixed(1) + " ms";
      }
      state.playout = { delay: s.jitterBufferDelay, count: s.jitterBufferEmittedCount };
    }
  });
}

function limitValue() {
  const v = Number($("limit").value);
  return v >= noLimit() ? null : v;
}

function showLimit() {
  const v = limitValue();
  $("limit-value").textContent = v === null ? "no limit" : v + " dB";
}

function sendControls() {
  const msg = { type: "control", enabled: $("enabled").checked, attenuation_limit_db: limitValue() };
  if (state.channel && state.channel.readyState === "open") {
    state.channel.send(JSON.stringify(msg));
  }
}

// Ends the session on the server. keepalive lets the request outlive the page (Leave
// just before closing the tab, or pagehide); the caller awaits it before closing the
// peer connection, so the browser never aborts it. Gives up after 3 s.
function hangUp(loc) {
  const t0 = performance.now();
  return fetch(loc, {
    method: "DELETE", headers: headers(), keepalive: true, signal: AbortSignal.timeout(3000),
  }).then(
    async (r) => {
      await r.arrayBuffer(); // read to the end: a response left unread counts as aborted
      state.hangUp = { status: r.status, ms: performance.now() - t0 };
    },
    (e) => { state.hangUp = { error: String(e), ms: performance.now() - t0 }; },
  );
}

const EMPTY = "–";
const STAT_IDS = ["latency", "rtt", "playout", "loss", "cpu", "frames", "session", "vad-value"];

// Back to the look of a fresh page: blank spectrograms and voice activity, no stats.
function resetViews() {
  for (const id of ["spec-in", "spec-out", "vad"]) {
    const c = $(id);
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
  }
  for (const side of ["in", "out"]) {
    $("meter-" + side).value = -80;
    $("level-" + side).textContent = EMPTY;
  }
  for (const id of STAT_IDS) $(id).textContent = EMPTY;
  state.vad = [];
  state.stats = null;
}

let leaving = null;

function leave(keepStatus) {
  if (!leaving) leaving = doLeave(keepStatus).finally(() => { leaving = null; });
  return leaving;
}

async function doLeave(keepStatus) {
  const pc = state.pc;
  state.pc = null;
  state.playout = null;
  clearInterval(state.statsTimer);
  cancelAnimationFrame(state.raf);
  $("leave").disabled = true;
  if (state.location) {
    const loc = state.location;
    state.location = null;
    await hangUp(loc);
  }
  if (pc) pc.close();
  state.channel = null;
  if (state.mic) state.mic.getTracks().forEach((t) => t.stop());
  state.mic = null;
  if (state.outSource) state.outSource.disconnect();
  state.analyserIn = state.analyserOut = state.outSource = state.remote = null;
  $("remote").srcObject = null;
  state.session = null;
  resetViews();
  $("join").disabled = false;
  $("enabled").disabled = true;
  $("limit").disabled = true;
  if (!keepStatus) setStatus("idle", "idle");
}

// Records `seconds` of the cleaned output (mono, 48 kHz) for tests.
function record(seconds) {
  return new Promise((resolve, reject) => {
    if (!state.ctx || !state.outSource) { reject(new Error("not connected")); return; }
    const need = Math.round(seconds * state.ctx.sampleRate);
    const chunks = [];
    let have = 0;
    const proc = state.ctx.createScriptProcessor(4096, 1, 1);
    const mute = state.ctx.createGain();
    mute.gain.value = 0;
    proc.onaudioprocess = (e) => {
      const data = e.inputBuffer.getChannelData(0);
      chunks.push(new Float32Array(data));
      have += data.length;
      if (have >= need) {
        proc.disconnect();
        state.outSource.disconnect(proc);
        const out = new Float32Array(have);
        let pos = 0;
        for (const c of chunks) { out.set(c, pos); pos += c.length; }
        // 16-bit base64: compact to hand back to the test
        const pcm = new Int16Array(need);
        for (let i = 0; i < need; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(out[i] * 32768)));
        const bytes = new Uint8Array(pcm.buffer);
        let bin = "";
        for (let i = 0; i < bytes.length; i += 8192) bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
        resolve({ sampleRate: state.ctx.sampleRate, pcm16: btoa(bin) });
      }
    };
    state.outSource.connect(proc);
    proc.connect(mute);
    mute.connect(state.ctx.destination);
  });
}

$("join").addEventListener("click", join);
$("leave").addEventListener("click", () => leave());
$("enabled").addEventListener("change", sendControls);
$("limit").addEventListener("input", () => { showLimit(); sendControls(); });
// Closing or leaving the page ends the session at once, not after the idle timeout.
window.addEventListener("pagehide", () => { if (state.location) hangUp(state.location); });
showLimit();
if (navigator.mediaDevices) {
  navigator.mediaDevices.addEventListener("devicechange", () => listDevices().catch(() => {}));
  listDevices().catch(() => {});
} else {
  // Browsers give the microphone only to secure contexts: https://, or http://localhost.
  $("join").disabled = true;
  setStatus("the microphone needs HTTPS: open this page over https:// or on localhost " +
    "(README, Set-up)", "error");
}

window.percepnet = {
  join, leave, record, state,
  setEnabled(on) { $("enabled").checked = on; sendControls(); },
  setLimit(db) { $("limit").value = db === null ? noLimit() : db; showLimit(); sendControls(); },
  connected: () => !!(state.pc && state.pc.connectionState === "connected" && state.analyserOut),
};
