// longvu web page: upload a video, stream an answer, show the compression trace.
"use strict";
const $ = (id) => document.getElementById(id);
let fileId = null;

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorText(resp) {
  try { const j = await resp.json(); return (j.error && j.error.message) || resp.statusText; }
  catch (e) { return resp.status + " " + resp.statusText; }
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    if (r.ok) { const j = await r.json(); $("model").textContent = j.data[0].id; }
  } catch (e) { /* shown on first request */ }
}

$("file").addEventListener("change", async () => {
  const f = $("file").files[0];
  if (!f) return;
  fileId = null;
  $("upload-status").textContent = "uploading " + f.name + " ...";
  const form = new FormData();
  form.append("file", f);
  form.append("purpose", "vision");
  const r = await fetch("/v1/files", { method: "POST", body: form, headers: headers() });
  if (!r.ok) { $("upload-status").textContent = "upload failed: " + (await errorText(r)); return; }
  const j = await r.json();
  fileId = j.id;
  $("upload-status").textContent = "uploaded " + j.filename + " (" + (j.bytes / 1048576).toFixed(1) + " MB)";
  $("upload-status").dataset.fileId = j.id;
});

function renderTrace(t) {
  const kept = new Set(t.kept_indices);
  const high = new Set(t.high_res_indices);
  const tl = $("timeline");
  tl.innerHTML = "";
  t.sampled_timestamps.forEach((ts, i) => {
    const c = document.createElement("span");
    const kind = high.has(i) ? "high" : kept.has(i) ? "kept" : "dropped";
    c.className = "cell " + kind;
    c.title = "t=" + ts.toFixed(1) + "s: " + (kind === "high" ? "kept, high resolution" : kind === "kept" ? "kept, low resolution" : "dropped");
    c.dataset.kind = kind;
    tl.appendChild(c);
  });
  const c = t.counts;
  const rows = [
    ["frames sampled", c.sampled_frames],
    ["frames after temporal reduction", c.frames_after_dino],
    ["visual tokens after frame reduction", c.visual_tokens_after_frame_reduction],
    ["after text-guided selection", c.visual_tokens_after_selection],
    ["after spatial token compression", c.visual_tokens_after_stc_drop],
    ["after force-remove", c.visual_tokens_after_force_remove],
    ["visual tokens in the prompt", c.visual_tokens_final],
    ["prompt length", c.sequence_length],
  ];
  $("counts").tBodies[0].innerHTML = rows.map(([k, v]) => "<tr><td>" + k + "</td><td>" + v + "</td></tr>").join("");
}

$("ask").addEventListener("click", async () => {
  $("answer").textContent = "";
  $("error").textContent = "";
  const path = $("path").value.trim();
  const url = fileId || path;
  if (!url) { $("error").textContent = "pick or upload a video first"; return; }
  const body = {
    messages: [{ role: "user", content: [
      { type: "video_url", video_url: { url: url } },
      { type: "text", text: $("question").value },
    ] }],
    stream: true,
    max_tokens: parseInt($("max-tokens").value, 10) || 256,
  };
  $("ask").disabled = true;
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
    });
    if (!r.ok) { $("error").textContent = await errorText(r); return; }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let k;
      while ((k = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, k);
        buf = buf.slice(k + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") { $("answer").dataset.done = "1"; continue; }
        const j = JSON.parse(data);
        if (j.error) { $("error").textContent = j.error.message; continue; }
        const ch = j.choices[0];
        if (ch.delta && ch.delta.content) $("answer").textContent += ch.delta.content;
        if (j.longvu) renderTrace(j.longvu);
      }
    }
  } catch (e) {
    $("error").textContent = String(e);
  } finally {
    $("ask").disabled = false;
  }
});

loadModel();
