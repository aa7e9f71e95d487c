"""The page's live camera, in headless Chromium with its fake camera: recorded chunks stream to a live
session, the status shows what was seen, and a question is answered over it."""

from __future__ import annotations

from server_util import LiveServer
from test_web import ARGS, CHROMIUM, needs_browser

from longvu.serve.app import create_app
from longvu.serve.settings import ServerSettings

CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


def test_camera_live_session(qwen_model, tmp_path):
    sync_api = needs_browser()
    settings = ServerSettings(model_name="tiny", upload_dir=str(tmp_path / "up"), max_new_tokens=4)
    app = create_app(qwen_model, settings)
    with LiveServer(app) as srv, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS + CAMERA)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(srv.url + "/")
            page.wait_for_function("document.querySelector('#model').textContent === 'tiny'")
            page.fill("#live-fps", "2")  # a 16-frame window every 8 s of camera
            page.click("#live-start")
            try:
                page.wait_for_function("+document.querySelector('#live-status').dataset.seen >= 8", timeout=120_000)
            except sync_api.TimeoutError:
                (session,) = app.state.live.sessions.values()
                raise AssertionError(f"{page.text_content('#live-status')}: {session.status()}") from None
            assert page.text_content("#live-status").startswith("live: seen 0–")
            page.fill("#question", "What do you see?")
            page.click("#ask")
            page.wait_for_selector("#log .msg.assistant[data-done='1']", timeout=60_000)
            covered = page.evaluate("window.lastTrace.covered_s")
            assert covered[0] == 0.0 and covered[1] >= 8.0
            page.click("#live-stop")
            page.wait_for_function("document.querySelector('#live-status').dataset.ended === '1'", timeout=60_000)
            (session,) = app.state.live.sessions.values()
            st = session.status()
            assert st["format"] == "matroska,webm" and st["error"] is None and st["seen_s"] >= covered[1]
            # the browser's WebM declares no frame rate: sampled by timestamps, the first frame at or after each
            # 1/fps instant, so kept frames are 1/fps apart, less a camera frame's jitter (not one frame per 1/1000 s)
            times = session.live.features().timestamps
            gaps = [b - a for a, b in zip(times, times[1:])]
            assert len(times) >= 16 and min(gaps) > 0.5 - 0.05, gaps
        finally:
            browser.close()
