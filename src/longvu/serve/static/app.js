// longvu web page: a video, the frames the model kept, tokens per stage, and a chat about the video.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { video: null, messages: [], key: sessionStorage.getItem("longvu-key") || "", keyWaiters: [],
  running: null, progressSeen: [] };

// ---------------------------------------------------------------- sizes and durations for people
function formatBytes(n) {
  if (n < 1024) return n + (n === 1 ? " byte" : " bytes");
  const units = ["KB", "MB", "GB", "TB"];
  let v = n / 1024, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (v < 10 ? v.toFixed(1) : String(Math.round(v))) + " " + units[i];
}

function formatDuration(s) {
  if (s < 60) return Math.max(1, Math.round(s)) + " s";
  const m = Math.floor(s / 60), r = Math.round(s % 60);
  return r ? m + " min " + r + " s" : m + " min";
}

// ---------------------------------------------------------------- requests and the API key
function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  if (state.key) h["Authorization"] = "Bearer " + state.key;
  return h;
}

function askForKey(message) {
  $("key-panel").hidden = false;
  $("key-error").textContent = message || "";
  $("api-key").focus();
  return new Promise((resolve) => state.keyWaiters.push(resolve));
}

$("key-save").addEventListener("click", () => {
  state.key = $("api-key").value.trim();
  sessionStorage.setItem("longvu-key", state.key);
  $("key-panel").hidden = true;
  state.keyWaiters.splice(0).forEach((resolve) => resolve());
});

// fetch() that asks for the API key on a 401 and tries again with it
async function api(path, opts) {
  for (let attempt = 0; ; attempt++) {
    const o = Object.assign({}, opts || {});
    o.headers = authHeaders(o.headers);
    const r = await fetch(path, o);
    if (r.status !== 401) return r;
    await askForKey(attempt ? "that key was refused" : "");
  }
}

async function errorText(resp) {
  try { const j = await resp.json(); return (j.error && j.error.message) || resp.statusText; }
  catch (e) { return resp.status + " " + resp.statusText; }
}

async function loadModel() {
  const r = await api("/v1/models");
  if (r.ok) $("model").textContent = (await r.json()).data[0].id;
}

// ---------------------------------------------------------------- the video
function newConversation() {
  if (state.running) state.running.abort();
  state.messages = [];
  $("log").innerHTML = "";
  $("error").textContent = "";
}

// A failed upload or open: the error in the video area, and no video left on screen, so that it is
// clear no question can be about the previous one.
function mediaError(message) {
  openVideo(null, null);
  $("file").value = "";
  $("media-error").textContent = message;
}

$("file").addEventListener("change", async () => {
  const f = $("file").files[0];
  if (!f) return;
  $("media-error").textContent = "";
  $("upload-status").textContent = "uploading " + f.name + " (" + formatBytes(f.size) + ") ...";
  const form = new FormData();
  form.append("file", f);
  form.append("purpose", "vision");
  let r;
  try { r = await api("/v1/files", { method: "POST", body: form }); }
  catch (e) { mediaError("upload failed: " + e.message); return; }
  if (!r.ok) { mediaError("upload failed: " + (await errorText(r))); return; }
  const j = await r.json();
  openVideo(j.id, URL.createObjectURL(f));
  $("upload-status").textContent = "uploaded " + j.filename + " (" + formatBytes(j.bytes) + ")";
  $("upload-status").dataset.fileId = j.id;
});

$("use-path").addEventListener("click", async () => {
  const path = $("path").value.trim();
  $("media-error").textContent = "";
  if (!path) { $("media-error").textContent = "type a path on the server first"; return; }
  let r;
  try { r = await api("/v1/video?video=" + encodeURIComponent(path)); }
  catch (e) { mediaError("could not open " + path + ": " + e.message); return; }
  if (!r.ok) { mediaError("could not open " + path + ": " + (await errorText(r))); return; }
  openVideo(path, URL.createObjectURL(await r.blob()));
  $("upload-status").textContent = "opened " + path;
});

// ref null: no video (the player, the strip, the chart and the conversation emptied)
function openVideo(ref, src) {
  state.video = ref;
  if (src) $("player").src = src;
  else { $("player").removeAttribute("src"); $("player").load(); }
  $("upload-status").textContent = "";
  delete $("upload-status").dataset.fileId;
  $("strip").innerHTML = "";
  $("chart").innerHTML = "";
  newConversation();
}

// ---------------------------------------------------------------- what the model saw
function renderStrip(t) {
  const kept = new Set(t.kept_indices), high = new Set(t.high_res_indices);
  const strip = $("strip");
  strip.innerHTML = "";
  const loads = [];
  t.sampled_timestamps.forEach((ts, i) => {
    const kind = high.has(i) ? "high" : kept.has(i) ? "kept" : "dropped";
    const el = document.createElement(kind === "dropped" ? "span" : "img");
    el.className = "thumb " + kind;
    el.dataset.t = ts;
    el.dataset.kind = kind;
    el.title = ts.toFixed(1) + " s: " + { high: "kept, high resolution", kept: "kept", dropped: "dropped" }[kind];
    el.addEventListener("click", () => { $("player").currentTime = ts; });
    if (kind !== "dropped") { el.alt = el.title; loads.push([el, ts]); }
    strip.appendChild(el);
  });
  loadThumbnails(loads);
}

async function loadThumbnails(items) {
  const video = state.video;
  const next = async () => {
    while (items.length && video === state.video) {
      const [img, ts] = items.shift();
      const r = await api("/v1/thumbnail?w=72&t=" + ts + "&video=" + encodeURIComponent(video));
      if (r.ok) img.src = URL.createObjectURL(await r.blob());
      else img.classList.add("missing");
    }
  };
  await Promise.all([next(), next(), next(), next()]);
}

function renderChart(c) {
  const rows = [
    ["frames", "sampled frames", c.sampled_frames],
    ["frames", "after temporal reduction", c.frames_after_dino],
    ["tokens", "visual tokens of kept frames", c.visual_tokens_after_frame_reduction],
    ["tokens", "after text-guided selection", c.visual_tokens_after_selection],
    ["tokens", "after spatial compression", c.visual_tokens_after_stc_drop],
    ["tokens", "after force-remove", c.visual_tokens_after_force_remove],
    ["tokens", "in the prompt", c.visual_tokens_final],
  ];
  const max = { frames: Math.max(1, c.sampled_frames), tokens: Math.max(1, c.visual_tokens_after_frame_reduction) };
  $("chart").innerHTML = "";
  for (const [unit, label, v] of rows) {
    const row = document.createElement("div");
    row.className = "bar-row " + unit;
    row.dataset.stage = label;
    row.dataset.value = v;
    row.innerHTML = "<span class='bar-label'></span><span class='bar'><span class='fill'></span></span><span class='bar-value'></span>";
    row.querySelector(".bar-label").textContent = label;
    row.querySelector(".fill").style.width = (100 * v / max[unit]).toFixed(1) + "%";
    row.querySelector(".bar-value").textContent = v + " " + unit;
    $("chart").appendChild(row);
  }
}

// ---------------------------------------------------------------- the chat
function bubble(role, text) {
  const el = document.createElement("div");
  el.className = "msg " + role;
  el.textContent = text;
  $("log").appendChild(el);
  return el;
}

async function readEvents(resp, onEvent) {
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let k;
    while ((k = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, k);
      buf = buf.slice(k + 2);
      if (event.startsWith("data: ")) onEvent(event.slice(6));
    }
  }
}

// ---------------------------------------------------------------- progress while the video is encoded
const STAGES = { queued: "waiting for the model", decoding: "decoding frames", encoding: "encoding the kept frames",
  answering: "frames ready, answering" };

// A progress bar in the answer's bubble: the stage, frames done of the total, and the time left in the
// stage, estimated from the rate since the stage began.
function progressBar(out) {
  const el = document.createElement("div");
  el.className = "progress";
  el.innerHTML = "<span class='stage'></span><span class='track'><span class='fill'></span></span>"
    + "<span class='count'></span><span class='eta'></span>";
  out.appendChild(el);
  let stage = null, t0 = 0, d0 = 0;
  return (p) => {
    const now = performance.now();
    if (p.stage !== stage) { stage = p.stage; t0 = now; d0 = p.done; }
    const counted = p.total > 0 && (p.stage === "decoding" || p.stage === "encoding");
    const rate = (p.done - d0) / Math.max(1e-3, (now - t0) / 1000);
    let eta = "";
    if (counted && p.done >= p.total) eta = "";
    else if (counted && p.done > d0 && now - t0 > 500) eta = "about " + formatDuration((p.total - p.done) / rate) + " left";
    else if (counted) eta = "estimating the time left ...";
    el.dataset.stage = p.stage;
    el.querySelector(".stage").textContent = STAGES[p.stage] || p.stage;
    el.querySelector(".track").classList.toggle("unknown", !counted);
    el.querySelector(".fill").style.width = counted ? (100 * Math.min(1, p.done / p.total)).toFixed(1) + "%" : "";
    el.querySelector(".count").textContent = counted ? p.done + " / " + p.total + " frames"
      : p.stage === "queued" ? "" : p.done + " frames";
    el.querySelector(".eta").textContent = eta;
    state.progressSeen.push({ stage: p.stage, done: p.done, total: p.total,
      count: el.querySelector(".count").textContent, eta: eta, label: el.querySelector(".stage").textContent });
  };
}

async function ask() {
  $("error").textContent = "";
  const question = $("question").value.trim();
  if (state.running) return;
  if (!state.video) { $("error").textContent = "upload or open a video first"; return; }
  if (!question) { $("error").textContent = "type a question"; return; }
  const content = state.messages.length ? question
    : [{ type: "video_url", video_url: { url: state.video } }, { type: "text", text: question }];
  const messages = state.messages.concat([{ role: "user", content: content }]);
  $("question").value = "";
  bubble("user", question);
  const out = bubble("assistant", "");
  let text = "", failed = null, trace = null, progress = null, cancelled = false;
  const running = new AbortController();
  state.running = running;
  $("ask").disabled = true;
  $("cancel").hidden = false;
  try {
    const r = await api("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, signal: running.signal,
      body: JSON.stringify({ messages: messages, stream: true, max_tokens: parseInt($("max-tokens").value, 10) || 256 }),
    });
    if (!r.ok) failed = await errorText(r);
    else await readEvents(r, (data) => {
      if (data === "[DONE]") return;
      const j = JSON.parse(data);
      if (j.error) { failed = j.error.message; return; }
      if (j.longvu && j.longvu.progress) {
        if (!text) (progress = progress || progressBar(out))(j.longvu.progress);
        return;
      }
      const d = j.choices[0].delta;
      if (d && d.content) { text += d.content; out.textContent = text; }
      if (j.longvu) trace = j.longvu;
    });
  } catch (e) {
    if (running.signal.aborted) cancelled = true;  // Cancel (or a new conversation): the server stops on the disconnect
    else failed = String(e);
  } finally {
    if (state.running === running) state.running = null;
    $("ask").disabled = false;
    $("cancel").hidden = true;
  }
  if (cancelled) {  // not kept in the history
    out.className = "msg cancelled";
    out.textContent = "cancelled";
    return;
  }
  if (failed) {  // shown where it happened; the turn is not kept in the history
    out.className = "msg error";
    out.textContent = failed;
    return;
  }
  state.messages = messages.concat([{ role: "assistant", content: text }]);
  out.dataset.done = "1";
  if (trace) {
    window.lastTrace = trace;
    out.dataset.cache = trace.from_cache ? "1" : "0";
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = trace.counts.frames_after_dino + " of " + trace.counts.sampled_frames + " frames kept, "
      + trace.counts.visual_tokens_final + " visual tokens" + (trace.from_cache ? ", features from the cache" : "");
    out.appendChild(meta);
    renderStrip(trace);
    renderChart(trace.counts);
  }
}

$("ask").addEventListener("click", ask);
$("cancel").addEventListener("click", () => { if (state.running) state.running.abort(); });
$("question").addEventListener("keydown", (e) => {  // Enter sends, Shift+Enter is a new line
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); ask(); }
});
$("reset").addEventListener("click", newConversation);
loadModel();
