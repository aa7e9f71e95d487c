// longvu web page: a video, the frames the model kept, tokens per stage, and a chat about the video.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { video: null, messages: [], key: sessionStorage.getItem("longvu-key") || "", keyWaiters: [] };

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
  state.messages = [];
  $("log").innerHTML = "";
  $("error").textContent = "";
}

$("file").addEventListener("change", async () => {
  const f = $("file").files[0];
  if (!f) return;
  $("upload-status").textContent = "uploading " + f.name + " ...";
  const form = new FormData();
  form.append("file", f);
  form.append("purpose", "vision");
  const r = await api("/v1/files", { method: "POST", body: form });
  if (!r.ok) { $("upload-status").textContent = "upload failed: " + (await errorText(r)); return; }
  const j = await r.json();
  openVideo(j.id, URL.createObjectURL(f));
  $("upload-status").textContent = "uploaded " + j.filename + " (" + (j.bytes / 1048576).toFixed(1) + " MB)";
  $("upload-status").dataset.fileId = j.id;
});

$("use-path").addEventListener("click", async () => {
  const path = $("path").value.trim();
  if (!path) return;
  const r = await api("/v1/video?video=" + encodeURIComponent(path));
  if (!r.ok) { $("upload-status").textContent = await errorText(r); return; }
  openVideo(path, URL.createObjectURL(await r.blob()));
  $("upload-status").textContent = "opened " + path;
});

function openVideo(ref, src) {
  state.video = ref;
  $("player").src = src;
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

async function ask() {
  $("error").textContent = "";
  const question = $("question").value.trim();
  if (!state.video) { $("error").textContent = "upload or open a video first"; return; }
  if (!question) { $("error").textContent = "type a question"; return; }
  const content = state.messages.length ? question
    : [{ type: "video_url", video_url: { url: state.video } }, { type: "text", text: question }];
  const messages = state.messages.concat([{ role: "user", content: content }]);
  bubble("user", question);
  const out = bubble("assistant", "");
  let text = "", failed = null, trace = null;
  $("ask").disabled = true;
  try {
    const r = await api("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ messages: messages, stream: true, max_tokens: parseInt($("max-tokens").value, 10) || 256 }),
    });
    if (!r.ok) failed = await errorText(r);
    else await readEvents(r, (data) => {
      if (data === "[DONE]") return;
      const j = JSON.parse(data);
      if (j.error) { failed = j.error.message; return; }
      const d = j.choices[0].delta;
      if (d && d.content) { text += d.content; out.textContent = text; }
      if (j.longvu) trace = j.longvu;
    });
  } catch (e) {
    failed = String(e);
  } finally {
    $("ask").disabled = false;
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
$("reset").addEventListener("click", newConversation);
loadModel();
