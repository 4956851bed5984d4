"""The report in a real browser: headless Chromium loads it, finds the sections, takes a screenshot.

The `browser` fixture (conftest.py) skips, naming the packages, where Chromium is missing.
Set VISLAB_SCREENSHOT_DIR to keep the screenshot for a look.
"""

from __future__ import annotations

from PIL import Image

from vislab.report.classify import SECTIONS
from vislab.report.html import write_report
from vislab.testing.rundirs import make_run_dir


def test_report_renders_in_chromium(browser, tmp_path, keep_screenshot) -> None:
    from selenium.webdriver.common.by import By

    run = make_run_dir(tmp_path, name="browser-run", n_test=30)
    page = write_report(run, cams=False)
    browser.get(page.resolve().as_uri())
    assert "browser-run" in browser.title

    for sid, label in SECTIONS:
        sec = browser.find_element(By.ID, sid)
        assert sec.is_displayed(), sid
        assert sec.find_element(By.TAG_NAME, "h2").text.strip(), sid
        link = browser.find_element(By.CSS_SELECTOR, f'nav a[href="#{sid}"]')
        assert link.text == label
    kpis = browser.find_elements(By.CSS_SELECTOR, ".kpi")
    assert len(kpis) == 6 and kpis[0].find_element(By.CSS_SELECTOR, ".kpi-value").text.endswith("%")

    # every embedded image decoded, and nothing forces sideways scrolling
    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length"
    )
    assert broken == 0 and len(browser.find_elements(By.TAG_NAME, "img")) >= 5
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1

    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1280, min(int(height) + 40, 12000))
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as im:
        assert im.width >= 1000 and im.height >= 2000
    keep_screenshot(shot, "report.png")
