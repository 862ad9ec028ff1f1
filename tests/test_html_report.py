"""report.html and index.html: self-contained pages that a real headless Chromium renders without errors,
showing the flagged label."""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from fixtures.audit_models import AUDIT_INFECTED, build_audit_models
from scanner.audit.index_page import INDEX_HTML, write_index
from scanner.audit.store import DONE, ERROR, INFECTED, AuditStore, ModelKey, Outcome
from scanner.cli import main
from scanner.html_report import REPORT_HTML, bar_chart_svg, render_report, threshold_norm
from scanner.mad import anomaly_index

CHEAP = ["--images-per-step", "64", "--max-steps", "100", "--threads", "1", "--quiet"]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1200,1800",
]


@pytest.fixture(scope="module")
def models(digits: dict[str, Path]) -> dict[str, Path]:
    """The session's digits fixtures plus the audit's own models, in the same folder."""
    return build_audit_models(digits["digits_test.npz"].parent)


@pytest.fixture(scope="module")
def scanned(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An audit folder holding one infected model's `cleanse scan --out` report and index.html."""
    out = tmp_path_factory.mktemp("audit")
    report_dir = out / "reports" / "infected"
    args = ["scan", str(models[AUDIT_INFECTED]), "--data", str(models["digits_test.npz"]), "--out", str(report_dir)]
    result = CliRunner().invoke(main, [*args, *CHEAP])
    assert result.exit_code == 1, result.output
    with AuditStore(out / "audit.sqlite") as store:
        infected = ModelKey(str(models[AUDIT_INFECTED]), "a" * 64, "c" * 64)
        store.finish(infected, Outcome(DONE, INFECTED, 4.2, [7], 3.0), str(report_dir))
        broken = ModelKey("/models/broken.onnx", "b" * 64, "c" * 64)
        store.finish(broken, Outcome(ERROR, error="not a readable ONNX model <bad>"))
        write_index(store.rows(), out)
    return out


def test_the_threshold_line_sits_where_the_anomaly_index_reaches_the_threshold() -> None:
    median, mad, threshold = 11.3, 1.75, 2.0
    assert anomaly_index(threshold_norm(median, mad, threshold), median, mad) == pytest.approx(threshold)


def test_the_chart_marks_flagged_bars_and_skips_a_threshold_below_zero() -> None:
    svg = bar_chart_svg({0: 10.0, 1: 2.0, 2: 11.0}, [1], median=10.0, cutoff=-3.0)
    assert svg.count('class="bar flagged"') == 1 and svg.count('class="bar"') == 2
    assert 'class="median"' in svg and 'class="threshold"' not in svg


@pytest.mark.slow
def test_scan_out_writes_one_self_contained_report_html(scanned: Path) -> None:
    html = (scanned / "reports" / "infected" / REPORT_HTML).read_text()
    sources = re.findall(r'src="([^"]*)"', html)
    # mask, pattern and fusion of the 10 labels and of the most suspicious source-specific pair, and the most
    # suspicious additive look's perturbation
    assert len(sources) == 34 and all(source.startswith("data:image/png;base64,") for source in sources)
    assert "<script" not in html and "<link" not in html and 'href="http' not in html
    assert 'id="label-7"' in html and 'class="threshold"' in html


@pytest.mark.slow
def test_a_label_flagged_in_the_close_band_is_marked_close(scanned: Path) -> None:
    """The same report judged with a threshold twice label 7's p-value: its flag lies in the close band."""
    from scanner.mitigate.report_folder import read_scan_report

    folder = scanned / "reports" / "infected"
    report = read_scan_report(folder)
    p_value = report.judged.flag_p_value(7)
    assert report.flagged == [7] and "(CLOSE)" not in render_report(report, folder)
    band = dataclasses.replace(report.judged, threshold=p_value * 2, inconclusive_below=p_value * 20)
    html = render_report(dataclasses.replace(report, decision=band), folder)
    assert "label 7 <strong>FLAGGED (CLOSE)</strong>" in html and "<td>flagged (close)</td>" in html
    assert "label(s) 7 flagged only just" not in html and "a close call: the model&#x27;s p-value" in html


@pytest.mark.slow
def test_index_links_done_models_and_escapes_errors(scanned: Path) -> None:
    html = (scanned / INDEX_HTML).read_text()
    assert html.count("<a href=") == 1 and 'href="reports/infected/report.html"' in html
    assert "not a readable ONNX model &lt;bad&gt;" in html


# ---------------------------------------------------------------- a real browser


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator:
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("the browser test needs Chromium: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def severe_console_messages(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.mark.slow
def test_chromium_renders_both_pages_with_the_flagged_label(browser, scanned: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get((scanned / INDEX_HTML).as_uri())
    assert browser.title == "Cleanse audit"
    assert "1 infected, 1 could not be scanned" in browser.find_element(By.TAG_NAME, "body").text
    browser.find_element(By.LINK_TEXT, Path(AUDIT_INFECTED).name).click()

    assert browser.current_url.endswith("/reports/infected/report.html")
    assert browser.title.startswith("Cleanse: infected")
    assert browser.find_element(By.ID, "flagged").text == "7"
    flagged_cards = browser.find_elements(By.CSS_SELECTOR, ".trigger.flagged")
    assert [card.get_attribute("id") for card in flagged_cards] == ["label-7"]
    assert "FLAGGED" in flagged_cards[0].text
    images_loaded = browser.execute_script(
        "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"
    )
    assert len(images_loaded) == 34 and all(images_loaded)  # 10 labels and the top pair, 3 each; 1 additive look
    flagged_bar = browser.find_element(By.CSS_SELECTOR, "svg rect.bar.flagged")
    assert flagged_bar.size["height"] > 0 and browser.find_element(By.CSS_SELECTOR, "svg line.threshold")
    assert severe_console_messages(browser) == []
    browser.save_screenshot(str(tmp_path / "report.png"))
