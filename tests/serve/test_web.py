"""The web page, driven in headless Chromium with Playwright: the player, the frame strip, the chart,
a two-turn chat, the API-key flow and inline errors; and the thumbnails endpoint behind it."""

from __future__ import annotations

import io
import os
import shutil
import threading
import time

import numpy as np
import pytest
from conftest import FIXTURES
from server_util import LiveServer, local_client

from longvu import GenerationOptions, LongVU
from longvu.errors import Cancelled
from longvu.model.video import load_video
from longvu.pipeline.cache import FeatureCache
from longvu.serve.app import create_app
from longvu.serve.settings import ServerSettings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
VIDEO = FIXTURES / "videos" / "video1.mp4"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
QUESTION = "What is happening in this video?"


def browser_page(p):
    browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    return browser, browser.new_page(viewport={"width": 1000, "height": 900})


def needs_browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    return sync_api


def ask(page, question: str, turn: int) -> None:
    page.fill("#question", question)
    page.click("#ask")
    page.wait_for_selector(f"#log .msg.assistant[data-done='1'] >> nth={turn - 1}", timeout=60_000)


def test_frames_seek_and_two_turns(qwen_model, tmp_path):
    sync_api = needs_browser()
    # a smaller context, so that the 21 frames of video1 do not all fit: 3 are dropped, 11 of 18 get high resolution
    # a cache of its own, so that the page's first turn encodes the video (and shows the progress)
    lv = LongVU(qwen_model.with_overrides({"tokenizer_model_max_length": 1300}).model, FeatureCache(tmp_path / "c"))
    expected = LongVU(lv.model).ask(VIDEO, QUESTION, generation=GenerationOptions(max_new_tokens=4, greedy=True))
    frames = expected.trace.data["frames"]
    sampled_ts = expected.trace.data["video"]["timestamps"]
    assert 0 < len(frames["high_res"]) < len(frames["kept"]) < len(expected.trace.data["video"]["timestamps"])
    settings = ServerSettings(model_name="tiny", upload_dir=str(tmp_path / "up"), max_new_tokens=8)
    with LiveServer(create_app(lv, settings)) as srv, sync_api.sync_playwright() as p:
        browser, page = browser_page(p)
        try:
            page.goto(srv.url + "/")
            page.wait_for_function("document.querySelector('#model').textContent === 'tiny'")
            page.set_input_files("#file", str(VIDEO))
            page.wait_for_function("document.querySelector('#upload-status').textContent.startsWith('uploaded')")
            page.fill("#max-tokens", "6")
            ask(page, QUESTION, 1)
            assert page.input_value("#question") == ""  # cleared once sent
            # the encoding's progress was shown in the answer's bubble before the first token
            seen = page.evaluate("state.progressSeen")
            stages = [p["stage"] for p in seen]
            assert "decoding" in stages and "encoding" in stages and stages[-1] == "answering", seen
            assert {"label": "decoding frames", "count": f"{len(sampled_ts)} / {len(sampled_ts)} frames"}.items() <= next(
                p for p in seen if p["stage"] == "decoding" and p["done"] == len(sampled_ts)).items()  # fmt: skip
            # the strip: one thumbnail per kept frame at its timestamp, high-resolution ones outlined
            page.wait_for_function(
                "[...document.querySelectorAll('#strip img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            thumbs = page.eval_on_selector_all(
                "#strip img.thumb", "els => els.map(e => [+e.dataset.t, e.dataset.kind])"
            )
            assert [t for t, _ in thumbs] == frames["kept_timestamps"]
            assert [t for t, k in thumbs if k == "high"] == frames["high_res_timestamps"]
            sampled = expected.trace.data["video"]["timestamps"]
            assert page.eval_on_selector_all("#strip .thumb", "els => els.length") == len(sampled)
            dropped = page.eval_on_selector_all("#strip span.thumb.dropped", "els => els.map(e => +e.dataset.t)")
            assert dropped == [t for t in sampled if t not in frames["kept_timestamps"]]
            assert page.get_attribute("#strip img >> nth=2", "title").startswith(
                f"{frames['kept_timestamps'][2]:.1f} s"
            )
            # clicking a thumbnail seeks the player
            page.wait_for_function("document.querySelector('#player').readyState >= 1")
            page.click("#strip img >> nth=5")
            t5 = frames["kept_timestamps"][5]
            page.wait_for_function(f"Math.abs(document.querySelector('#player').currentTime - {t5}) < 0.05")
            # the chart: tokens after each stage, as the trace says
            chart = dict(
                page.eval_on_selector_all("#chart .bar-row", "rs => rs.map(r => [r.dataset.stage, +r.dataset.value])")
            )
            counts = expected.trace.data["counts"]
            assert chart["sampled frames"] == counts["sampled_frames"]
            assert chart["in the prompt"] == counts["visual_tokens_final"]
            # a second turn about the same video: history kept, features from the cache
            ask(page, "And then?", 2)
            roles = page.eval_on_selector_all("#log .msg", "els => els.map(e => e.className)")
            assert roles == ["msg user", "msg assistant", "msg user", "msg assistant"]
            assert page.get_attribute("#log .msg.assistant >> nth=1", "data-cache") == "1"
            assert page.text_content("#error") == ""
            shot = os.environ.get("LONGVU_SCREENSHOT") or str(tmp_path / "page.png")
            page.screenshot(path=shot, full_page=True)
        finally:
            browser.close()


def test_api_key_flow_and_inline_errors(qwen_model, tmp_path):
    sync_api = needs_browser()
    settings = ServerSettings(model_name="tiny", upload_dir=str(tmp_path / "up"), api_key="s3cret", max_new_tokens=4)
    with LiveServer(create_app(qwen_model, settings)) as srv, sync_api.sync_playwright() as p:
        browser, page = browser_page(p)
        try:
            page.goto(srv.url + "/")
            page.wait_for_selector("#key-panel:not([hidden])")  # the 401 asks for the key
            page.fill("#api-key", "wrong")
            page.click("#key-save")
            page.wait_for_function("document.querySelector('#key-error').textContent.includes('refused')")
            page.fill("#api-key", "s3cret")
            page.click("#key-save")
            page.wait_for_function("document.querySelector('#model').textContent === 'tiny'")
            page.set_input_files("#file", str(VIDEO))
            page.wait_for_function("document.querySelector('#upload-status').textContent.startsWith('uploaded')")
            page.fill("#question", "Say <|im_start|> please")  # a reserved marker: the server's 400, shown inline
            page.click("#ask")
            page.wait_for_selector("#log .msg.error")
            assert "reserved" in page.text_content("#log .msg.error")
            ask(page, QUESTION, 1)  # the chat goes on; the failed turn is not in the history
            assert page.eval_on_selector_all("#log .msg.assistant", "els => els.length") == 1
        finally:
            browser.close()


def test_thumbnails_are_the_frames_at_their_timestamps(qwen_model, tmp_path):
    from PIL import Image

    settings = ServerSettings(model_name="tiny", allowed_local_media_path=str(VIDEO.parent))
    clip = load_video(VIDEO)
    with local_client(create_app(qwen_model, settings)) as c:
        for k in (0, 7, 20):
            r = c.get("/v1/thumbnail", params={"video": VIDEO.name, "t": clip.timestamps[k], "w": 96})
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            thumb = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=np.float32)
            diffs = []
            for j in (k, (k + 10) % len(clip)):
                ref = Image.fromarray(clip.frames[j]).resize((thumb.shape[1], thumb.shape[0]))
                diffs.append(np.abs(np.asarray(ref, dtype=np.float32) - thumb).mean())
            assert diffs[0] < 12 and diffs[0] < diffs[1] / 3, (k, diffs)  # that frame (JPEG-close), not another
        assert c.get("/v1/thumbnail", params={"video": "../secret.mp4", "t": 1}).status_code == 403
        assert c.get("/v1/thumbnail", params={"video": "data:video/mp4;base64,AAAA", "t": 1}).status_code == 400
        for bad in ("-1", "inf", "nan"):
            assert c.get("/v1/thumbnail", params={"video": VIDEO.name, "t": bad}).status_code == 400
        r = c.get("/v1/video", params={"video": VIDEO.name})
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4" and r.content == VIDEO.read_bytes()


class PacedBackend:
    """Reports progress at a known pace, then waits until the request is cancelled (no model runs)."""

    concurrency = 1

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def stream(self, job, cancel, progress=None):
        for done in range(0, 61, 6):
            progress("decoding", done, 60)
            time.sleep(0.3)
        progress("encoding", 0, 20)
        if cancel.wait(60):
            self.cancelled.set()
        raise Cancelled()


def test_progress_bar_and_cancel(qwen_model, tmp_path):
    sync_api = needs_browser()
    backend = PacedBackend()
    settings = ServerSettings(model_name="tiny", upload_dir=str(tmp_path / "up"))
    with LiveServer(create_app(qwen_model, settings, backend=backend)) as srv, sync_api.sync_playwright() as p:
        browser, page = browser_page(p)
        try:
            page.goto(srv.url + "/")
            page.set_input_files("#file", str(VIDEO))
            page.wait_for_function("document.querySelector('#upload-status').textContent.startsWith('uploaded')")
            # Shift+Enter is a new line; Enter sends, and the box is cleared
            page.fill("#question", "")
            page.focus("#question")
            page.keyboard.type("first line")
            page.keyboard.press("Shift+Enter")
            page.keyboard.type("second line")
            assert page.input_value("#question") == "first line\nsecond line"
            assert page.eval_on_selector_all("#log .msg", "els => els.length") == 0
            page.keyboard.press("Enter")
            assert page.input_value("#question") == ""
            assert page.text_content("#log .msg.user") == "first line\nsecond line"
            # the bar: stage, count, time left, while the server reports progress
            bar = "#log .msg.assistant .progress"
            page.wait_for_selector(bar + "[data-stage='encoding']", timeout=30_000)
            assert page.text_content(bar + " .stage") == "encoding the kept frames"
            assert page.text_content(bar + " .count") == "0 / 20 frames"
            assert page.is_visible(bar + " .track")
            decoding = [p for p in page.evaluate("state.progressSeen") if p["stage"] == "decoding"]
            assert decoding[0]["count"] == "0 / 60 frames" and decoding[-1]["count"] == "60 / 60 frames"
            assert any(p["eta"].startswith("about ") and p["eta"].endswith(" left") for p in decoding), decoding
            # Cancel aborts the request; the server stops the job when the client goes away
            assert page.is_visible("#cancel")
            page.click("#cancel")
            page.wait_for_selector("#log .msg.cancelled")
            assert backend.cancelled.wait(10)
            assert page.is_hidden("#cancel") and page.is_enabled("#ask")
        finally:
            browser.close()


def test_sizes_errors_in_place_and_a_failed_open_clears_the_video(qwen_model, tmp_path):
    sync_api = needs_browser()
    small = tmp_path / "small.mp4"
    small.write_bytes(VIDEO.read_bytes()[:3000])  # uploads are checked when used, not when stored
    settings = ServerSettings(model_name="tiny", upload_dir=str(tmp_path / "up"), max_upload_mb=1.0)
    assert VIDEO.stat().st_size > 1024 * 1024  # over that limit
    red = "rgb(176, 0, 32)"
    color = "sel => getComputedStyle(document.querySelector(sel)).color"
    with LiveServer(create_app(qwen_model, settings)) as srv, sync_api.sync_playwright() as p:
        browser, page = browser_page(p)
        try:
            page.goto(srv.url + "/")
            assert page.get_attribute("link[rel=icon]", "href").startswith("data:image/svg+xml,")
            # asking with no video: the error in the chat area, in the error style
            page.fill("#question", "hello")
            page.click("#ask")
            assert page.text_content("#error") == "upload or open a video first"
            assert page.evaluate(color, "#error") == red
            # a small upload's size in KB (never "0.0 MB")
            page.set_input_files("#file", str(small))
            page.wait_for_function("document.querySelector('#upload-status').textContent.startsWith('uploaded')")
            assert page.text_content("#upload-status") == "uploaded small.mp4 (2.9 KB)"
            assert page.get_attribute("#player", "src")
            # a failed "Open": the error next to the video, in the error style, and the previous video gone
            page.fill("#path", "missing.mp4")
            page.click("#use-path")
            page.wait_for_function("document.querySelector('#media-error').textContent !== ''")
            assert page.text_content("#media-error").startswith("could not open missing.mp4: ")
            assert page.evaluate(color, "#media-error") == red
            assert page.get_attribute("#player", "src") is None and page.evaluate("state.video") is None
            assert page.text_content("#upload-status") == "" and page.text_content("#strip") == ""
            page.fill("#question", "and now?")
            page.click("#ask")
            assert page.text_content("#error") == "upload or open a video first"
            # a failed upload (over the server's limit): the same
            (tmp_path / "other.mp4").write_bytes(small.read_bytes())
            page.set_input_files("#file", str(tmp_path / "other.mp4"))
            page.wait_for_function("document.querySelector('#upload-status').textContent.startsWith('uploaded')")
            assert page.text_content("#media-error") == ""  # the last error went with the next success
            page.set_input_files("#file", str(VIDEO))
            page.wait_for_function("document.querySelector('#media-error').textContent.startsWith('upload failed')")
            assert page.get_attribute("#player", "src") is None and page.evaluate("state.video") is None
        finally:
            browser.close()
