"""The HTML report: self-contained, and checked in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import run_cli
from PIL import Image, ImageStat

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def open_in_browser(page_path, screenshot_path):
    """Load the page in headless Chromium; return (console errors and page errors, images that failed, title)."""
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    problems = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 1600})
        page.on(
            "console",
            lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
        )
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
        images = page.evaluate("document.images.length")
        title = page.title()
        page.screenshot(path=str(screenshot_path), full_page=True)
        browser.close()
    return problems, broken, images, title


def assert_not_blank(path):
    with Image.open(path) as shot:
        gray = shot.convert("L")
        assert gray.height > 1600  # the full page, well past the first screen
        stat = ImageStat.Stat(gray)
        assert stat.stddev[0] > 20, "screenshot is (nearly) one colour"
        assert gray.getextrema()[0] < 60  # dark text or plot lines are on it


def test_report_of_one_run_is_self_contained_and_renders(tiny_run, tmp_path):
    out = tmp_path / "one.html"
    result = run_cli("report", str(tiny_run), "--out", str(out))
    assert result.returncode == 0, result.stderr
    html = out.read_text()
    assert not re.search(r"(src|href)=['\"]?(https?:|//|file:)", html), "the page must need no network or other files"
    for needle in ("Diagnosis", "Learning curves", "Confusion", "Most confident mistakes", "Configuration"):
        assert needle in html
    for needle in ("Classification report and calibration", "Balanced accuracy", "top-5 accuracy", "macro average"):
        assert needle in html  # the classification report and the reliability diagram
    assert "alt='reliability diagram'" in html and "<code>cnnlab " in html  # the remedies are commands
    # The most confused pair is named (the tiny run's data guarantees a mistake; which pair it is varies).
    confusion = json.loads((tiny_run / "confusion.json").read_text())
    first = confusion["most_confused"][0]
    assert f"{confusion['classes'][first['a']]} / {confusion['classes'][first['b']]}" in html
    problems, broken, images, title = open_in_browser(out, tmp_path / "one.png")
    assert problems == [] and broken == 0 and images >= 4
    assert title == "cnnlab report: tiny"
    assert_not_blank(tmp_path / "one.png")


def test_report_compares_runs(tiny_run, tmp_path):
    other = shutil.copytree(tiny_run, tmp_path / "runs" / "other")
    out = tmp_path / "both.html"
    result = run_cli("report", str(tiny_run), str(other), "--out", str(out))
    assert result.returncode == 0, result.stderr
    html = out.read_text()
    assert "Comparison" in html and "Run tiny" in html and "Run other" in html
    problems, broken, images, _ = open_in_browser(out, tmp_path / "both.png")
    assert problems == [] and broken == 0 and images >= 9  # the comparison plot and four figures per run
    assert_not_blank(tmp_path / "both.png")


def test_report_rejects_what_is_not_a_run(tmp_path):
    result = run_cli("report", str(tmp_path / "missing"))
    assert result.returncode == 1 and "no such run folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
