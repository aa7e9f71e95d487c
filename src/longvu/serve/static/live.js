// longvu web page, live part: the browser's camera streamed to a live session (POST /v1/live), asked about
// while it records.  Uses app.js's state, api(), errorText() and newConversation() (loaded before this file).
"use strict";
const live = { id: null, recorder: null, stream: null, sent: 0, queue: [], sending: false, timer: null };

function liveStatusText(s) {
  const seen = s.covered_s ? "seen " + s.covered_s[0].toFixed(0) + "–" + s.covered_s[1].toFixed(0) + " s"
    : "nothing seen yet";
  return "live: " + seen + ", lag " + s.lag_s.toFixed(1) + " s" + (s.dropped_frames ? ", " + s.dropped_frames
    + " frames skipped to keep up" : "") + (s.ended ? ", ended" : "") + (s.error ? " (" + s.error + ")" : "");
}

function showLive(s) {
  const el = $("live-status");
  el.textContent = liveStatusText(s);
  el.dataset.seen = s.seen_s;
  el.dataset.ended = s.ended ? "1" : "0";
}

async function sendChunks() {  // one at a time, in order, each with the byte offset it starts at
  if (live.sending) return;
  live.sending = true;
  try {
    while (live.queue.length && live.id) {
      const blob = live.queue.shift();
      const r = await api("/v1/live/" + live.id + "?offset=" + live.sent,
        { method: "POST", headers: { "Content-Type": blob.type || "video/webm" }, body: blob });
      if (!r.ok) { $("live-status").textContent = "live: chunk refused: " + (await errorText(r)); continue; }
      live.sent += blob.size;
      showLive(await r.json());
    }
  } finally {
    live.sending = false;
  }
}

async function startCamera() {
  $("error").textContent = "";
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (e) {
    $("live-status").textContent = "no camera: " + e.message;
    return;
  }
  const fps = parseFloat($("live-fps").value) || 1;
  const r = await api("/v1/live", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ fps: fps }) });
  if (!r.ok) { $("live-status").textContent = "live: " + (await errorText(r)); stopTracks(); return; }
  const s = await r.json();
  Object.assign(live, { id: s.id, sent: 0, queue: [] });
  state.video = s.id;  // questions now go to the live session
  newConversation();
  $("player").srcObject = live.stream;
  $("player").play().catch(() => {});
  const type = MediaRecorder.isTypeSupported("video/webm;codecs=vp8") ? "video/webm;codecs=vp8" : "video/webm";
  live.recorder = new MediaRecorder(live.stream, { mimeType: type });
  live.recorder.ondataavailable = (ev) => { if (ev.data.size) { live.queue.push(ev.data); sendChunks(); } };
  live.recorder.onstop = async () => {
    await sendChunks();
    while (live.sending) await new Promise((res) => setTimeout(res, 100));
    const d = await api("/v1/live/" + s.id, { method: "DELETE" });
    if (d.ok) showLive(await d.json());
  };
  live.recorder.start(1000);  // a chunk every second
  live.timer = setInterval(async () => {
    const g = await api("/v1/live/" + s.id);
    if (g.ok) { const st = await g.json(); showLive(st); if (st.ended) clearInterval(live.timer); }
  }, 2000);
  $("live-start").disabled = true;
  $("live-stop").disabled = false;
  $("upload-status").textContent = "recording from the camera: ask about what it has seen so far";
}

function stopTracks() {
  if (live.stream) live.stream.getTracks().forEach((t) => t.stop());
}

function stopCamera() {
  if (live.recorder && live.recorder.state !== "inactive") live.recorder.stop();
  stopTracks();
  $("live-start").disabled = false;
  $("live-stop").disabled = true;
}

$("live-start").addEventListener("click", startCamera);
$("live-stop").addEventListener("click", stopCamera);
