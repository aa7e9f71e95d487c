"""The web page, driven in headless Chromium with Playwright."""

from __future__ import annotations

import shutil

import pytest
from conftest import FIXTURES
from server_util import LiveServer

from longvu.server import ServerSettings, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")

VIDEO = FIXTURES / "videos" / "video1.mp4"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def test_upload_ask_and_see_the_timeline(qwen_model, tmp_path):
    settings = ServerSettings(model_name="tiny", upload_dir=str(tmp_path / "up"), max_new_tokens=8)
    with LiveServer(create_app(qwen_model, settings)) as srv, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(srv.url + "/")
            assert page.text_content("#model") == "tiny"
            page.set_input_files("#file", str(VIDEO))
            page.wait_for_function("document.querySelector('#upload-status').textContent.startsWith('uploaded')")
            page.fill("#question", "Describe this video in detail.")
            page.fill("#max-tokens", "8")
            page.click("#ask")
            page.wait_for_selector("#answer[data-done='1']", timeout=60_000)
            assert page.text_content("#error") == ""
            assert page.text_content("#answer").strip() != ""
            kinds = page.eval_on_selector_all("#timeline .cell", "cells => cells.map(c => c.dataset.kind)")
            # video1: 21 sampled frames, all kept (the budget fits), all high resolution
            assert len(kinds) == 21 and set(kinds) == {"high"}
            rows = page.eval_on_selector_all("#counts tr", "rows => rows.map(r => r.innerText)")
            assert any(r.startswith("frames sampled") and r.endswith("21") for r in rows)
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()
