"""The viewer in a real browser: headless Chromium (Debian's package; `.ci/run` installs it)
driven by Playwright loads the viewer page of a slide with planted tumour, waits until the
slide's deep-zoom tiles and the attention overlay are drawn, and checks the screenshot's pixels.

The README's screenshot is this test's first screenshot:
    HISTSTORE_SCREENSHOT=docs/img/serve.png .venv/bin/python -m pytest tests/web/test_browser.py
"""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

# what the machine notes say Chromium needs here (root, no GPU, no network but registries)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1200, "height": 760}


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    # fail, never skip: CI must have a browser (.ci/run installs Debian's chromium)
    assert path, "Chromium is not installed: `apt-get install -y chromium` (.ci/run does it where missing)"
    return path


def _hsv(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB").convert("HSV"), np.float32)


def overlay_share(hsv: np.ndarray) -> float:
    """Share of pixels in the orange-to-yellow band of the inferno map (blended over tissue):
    hue 15-65 degrees, clearly saturated. H&E pink and purple never fall there."""
    h, s, v = hsv[..., 0] * 360 / 255, hsv[..., 1] / 255, hsv[..., 2] / 255
    return float(((h >= 15) & (h <= 65) & (s >= 0.35) & (v >= 0.45)).mean())


def tissue_share(hsv: np.ndarray) -> float:
    """Share of pixels with the stained tissue's pink-to-purple hue (265-350 degrees)."""
    h, s = hsv[..., 0] * 360 / 255, hsv[..., 1] / 255
    return float(((h >= 265) & (h <= 350) & (s >= 0.12)).mean())


def _frames(page, n: int = 3) -> None:
    """Let the page draw n animation frames (OpenSeadragon draws on requestAnimationFrame)."""
    page.evaluate("n => new Promise(done => { const step = k => k ? requestAnimationFrame(() => step(k - 1)) : done(); step(n); })", n)


def test_viewer_draws_slide_and_attention_in_chromium(web, tmp_path):
    from playwright.sync_api import sync_playwright

    from histstore.web.app import create_app
    from histstore.web.server import serve_in_thread

    exe = chromium_path()
    app = create_app(web.store, web.viewer_dir)
    with serve_in_thread(app) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/slides/{web.tumour}/view?run={web.run_id}&fold=0")
            # selectors, not wait_for_function: the app's Content-Security-Policy forbids eval
            page.wait_for_selector("html[data-slide-ready='1'][data-overlay-ready='1']", state="attached",
                                   timeout=30_000)
            _frames(page)
            osd = page.locator("#osd").bounding_box()
            clip = {"x": osd["x"], "y": osd["y"], "width": osd["width"], "height": osd["height"]}
            with_overlay = page.screenshot(clip=clip)
            full = page.screenshot()
            if os.environ.get("HISTSTORE_SCREENSHOT"):  # the README's picture, in 128 colours
                Image.open(io.BytesIO(full)).convert("RGB").quantize(128).save(
                    os.environ["HISTSTORE_SCREENSHOT"], optimize=True)
            (tmp_path / "viewer.png").write_bytes(full)

            # the panel lists the run's most attended tiles; one click jumps there and shows it
            assert page.locator("#top-tiles li").count() == 10
            page.locator("#top-tiles li a").first.click()
            page.wait_for_selector("#tile-info dl", state="attached")
            info = page.locator("#tile-info").inner_text()
            assert "tile_id" in info and "attention" in info and "tissue fraction" in info, info

            # overlay off: the same slide without the attention colours
            page.locator("#show-attention").uncheck()
            page.wait_for_selector("html[data-slide-ready='1']:not([data-overlay-ready])", state="attached")
            _frames(page)
            without = page.screenshot(clip=clip)
            assert not errors, errors
        finally:
            browser.close()

    on, off = _hsv(with_overlay), _hsv(without)
    assert on[..., 2].std() > 10, "blank screenshot"
    assert tissue_share(on) > 0.02, tissue_share(on)          # tissue shows through the overlay
    assert overlay_share(on) > 0.01, overlay_share(on)        # attention colours are drawn
    assert tissue_share(off) > 0.10, tissue_share(off)        # zoomed into the tumour: tissue
    assert overlay_share(off) < overlay_share(on) / 10, (overlay_share(off), overlay_share(on))
