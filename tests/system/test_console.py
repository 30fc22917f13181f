"""The web console at `/`, in a real headless browser (Debian's chromium and chromedriver,
driven by selenium) against the real stack: upload a real frame and count the boxes drawn,
the API's 401 message for a wrong key, the data-subject tools with a dpo key, the latest
audit report, and no Content-Security-Policy violation on the way."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import DATA_DIR, KEYS, REPO_ROOT, headers, wait_until

SCREENSHOT_DIR = REPO_ROOT / "var" / "console"
FRAME = DATA_DIR / "training_images" / "vid_4_1000.jpg"
BUSY_FRAME = DATA_DIR / "training_images" / "vid_4_6280.jpg"  # five cars


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if found:
            return found
    pytest.fail(f"{' or '.join(names)} not installed: `apt-get install chromium chromium-driver` "
                "(scripts/install_tools.sh installs them for make test)")


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("console-downloads")


@pytest.fixture(scope="module")
def browser(stack, downloads) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(_binary("chromedriver")), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def open_console(browser, stack, key: str) -> None:
    browser.get(f"{stack.gateway}/")
    WebDriverWait(browser, 10).until(EC.presence_of_element_located((By.ID, "key-form")))
    browser.execute_script("sessionStorage.clear()")
    browser.find_element(By.ID, "api-key").send_keys(key)
    browser.find_element(By.ID, "key-save").click()


def upload(browser, path: Path, user_id: str) -> None:
    field = browser.find_element(By.ID, "user-id")
    field.clear()
    field.send_keys(user_id)
    browser.find_element(By.ID, "image-file").send_keys(str(path))


def csp_violations(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser")
            if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]]


def wait_for(browser, condition, timeout: float = 60):
    return WebDriverWait(browser, timeout).until(condition)


def test_console_page_is_static_with_a_strict_policy(stack, http):
    page = http.get(f"{stack.gateway}/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in policy
    html = page.text
    # No inline script, no inline handler, no inline style: everything comes from /static/.
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>"
    assert not re.search(r"\son[a-z]+\s*=", html) and not re.search(r"\sstyle\s*=", html)
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        answer = http.get(f"{stack.gateway}{asset}", timeout=10)
        assert answer.status_code == 200, asset
    # The report routes need a dpo/admin key like every API route.
    assert http.get(f"{stack.gateway}/api/reports/latest", timeout=10).status_code == 401
    assert http.get(f"{stack.gateway}/api/reports/latest", headers=headers("client"), timeout=10).status_code == 403


def test_upload_draws_one_box_per_detection(stack, http, browser):
    open_console(browser, stack, KEYS["client"])
    assert browser.execute_script("return sessionStorage.getItem('car-detection-api-key')") == KEYS["client"]
    assert browser.execute_script("return localStorage.length") == 0 and not browser.get_cookies()
    upload(browser, BUSY_FRAME, f"console-{uuid.uuid4().hex[:8]}")
    result = wait_for(browser, EC.visibility_of_element_located((By.ID, "detect-result")))
    request_id = result.get_attribute("data-request-id")
    stored = http.get(f"{stack.gateway}/api/results/predictions/{request_id}", headers=headers("client"), timeout=10)
    assert stored.status_code == 200, stored.text
    detections = stored.json()["detections"]
    assert len(detections) >= 2, "this frame holds several cars"
    boxes = wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#boxes .box") or False, 10)
    assert len(boxes) == len(detections)
    assert browser.find_element(By.ID, "r-count").text == str(len(detections))
    assert browser.find_element(By.ID, "r-model").text.endswith(f"version {stored.json()['model_version']}")
    assert browser.find_element(By.ID, "r-inference").text.endswith(" ms")
    # Each box sits where the API put it, scaled from image pixels to the picture on screen.
    frame = browser.find_element(By.ID, "frame")
    scale = frame.size["width"] / browser.execute_script("return arguments[0].naturalWidth", frame)
    origin = frame.location
    for box, detection in zip(sorted(boxes, key=lambda b: int(b.get_attribute("data-index"))), detections):
        bbox = detection["bbox"]
        assert abs(box.location["x"] - origin["x"] - bbox["x_min"] * scale) <= 3
        assert abs(box.location["y"] - origin["y"] - bbox["y_min"] * scale) <= 3
        assert abs(box.size["width"] - (bbox["x_max"] - bbox["x_min"]) * scale) <= 3
        assert f"{detection['confidence']:.2f}" in box.text
    rows = browser.find_elements(By.CSS_SELECTOR, "#detections-table tbody tr")
    assert len(rows) == len(detections)
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT_DIR / "detect.png"))
    assert csp_violations(browser) == []


DROP_SCRIPT = """
const [b64, name, done] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
document.getElementById("drop-zone").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
done();
"""


def test_a_dropped_image_is_detected_too(stack, http, browser):
    open_console(browser, stack, KEYS["client"])
    browser.execute_async_script(DROP_SCRIPT, base64.b64encode(FRAME.read_bytes()).decode(), FRAME.name)
    result = wait_for(browser, EC.visibility_of_element_located((By.ID, "detect-result")))
    stored = http.get(f"{stack.gateway}/api/results/predictions/{result.get_attribute('data-request-id')}",
                      headers=headers("client"), timeout=10)
    assert stored.status_code == 200, stored.text
    boxes = wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#boxes .box") or False, 10)
    assert len(boxes) == len(stored.json()["detections"]) >= 1


def test_a_wrong_key_shows_the_apis_401_message(stack, http, browser):
    expected = http.post(f"{stack.gateway}/api/detect", headers={"X-API-Key": "wrong-key-0123456789"},
                         files={"image": ("f.jpg", FRAME.read_bytes(), "image/jpeg")}, data={"user_id": "x"}, timeout=30)
    assert expected.status_code == 401
    open_console(browser, stack, "wrong-key-0123456789")
    upload(browser, FRAME, "console-wrong-key")
    error = wait_for(browser, EC.visibility_of_element_located((By.ID, "error")), 30)
    assert error.get_attribute("data-status") == "401"
    assert error.text.startswith(f"401: {expected.json()['error']}")
    assert browser.find_element(By.ID, "detect-result").get_attribute("hidden") is not None


def test_a_file_that_is_not_an_image_shows_the_apis_415_message(stack, http, browser, tmp_path):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_bytes(b"these are notes, not a JPEG\n" * 20)
    expected = http.post(f"{stack.gateway}/api/detect", headers=headers("client"), data={"user_id": "x"},
                         files={"image": ("notes.jpg", not_an_image.read_bytes(), "image/jpeg")}, timeout=30)
    assert expected.status_code == 415, expected.text
    open_console(browser, stack, KEYS["client"])
    upload(browser, not_an_image, "console-bad-file")
    error = wait_for(browser, EC.visibility_of_element_located((By.ID, "error")), 30)
    assert error.get_attribute("data-status") == "415"
    assert error.text.startswith(f"415: {expected.json()['error']}")
    assert browser.find_element(By.ID, "detect-result").get_attribute("hidden") is not None


def test_dpo_looks_up_exports_and_erases_a_subject(stack, http, browser, downloads):
    subject = f"console-subject-{uuid.uuid4().hex[:8]}"
    made = http.post(f"{stack.gateway}/api/detect", headers=headers("client"), data={"user_id": subject},
                     files={"image": ("f.jpg", FRAME.read_bytes(), "image/jpeg")}, timeout=30)
    assert made.status_code == 201, made.text
    open_console(browser, stack, KEYS["dpo"])
    browser.find_element(By.ID, "subject-id").send_keys(subject)
    browser.find_element(By.ID, "subject-lookup").click()
    wait_for(browser, lambda b: b.find_element(By.ID, "subject-result").get_attribute("data-count") == "1", 30)
    rows = browser.find_elements(By.CSS_SELECTOR, "#subject-predictions tbody tr")
    assert len(rows) == 1 and made.json()["request_id"] in rows[0].text
    journal = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#subject-journal tbody tr")]
    assert any("access_export" in row and "dpo" in row for row in journal), journal

    browser.find_element(By.ID, "subject-export").click()
    exported = wait_until(lambda: list(downloads.glob("export-*.json")), timeout=15)
    assert exported, "the export was not downloaded"
    body = json.loads(exported[0].read_text())
    assert body["count"] == 1 and body["predictions"][0]["request_id"] == made.json()["request_id"]

    # A client key may not use the dpo tools: the page shows the API's 403 message.
    browser.execute_script("sessionStorage.setItem('car-detection-api-key', arguments[0])", KEYS["client"])
    browser.find_element(By.ID, "subject-erase").click()
    browser.find_element(By.ID, "subject-erase-confirm").click()
    error = wait_for(browser, EC.visibility_of_element_located((By.ID, "error")), 30)
    refused = http.post(f"{stack.gateway}/api/results/subjects/erasure", headers=headers("client"),
                        json={"user_id": subject}, timeout=10)
    assert refused.status_code == 403
    assert error.get_attribute("data-status") == "403" and error.text.startswith(f"403: {refused.json()['error']}")
    assert http.get(f"{stack.gateway}/api/results/predictions/user/{subject}", headers=headers("dpo"),
                    timeout=10).json()["count"] == 1

    browser.execute_script("sessionStorage.setItem('car-detection-api-key', arguments[0])", KEYS["dpo"])
    browser.find_element(By.ID, "subject-erase").click()
    browser.find_element(By.ID, "subject-erase-confirm").click()
    wait_for(browser, lambda b: b.find_element(By.ID, "subject-result").get_attribute("data-count") == "0", 30)
    assert browser.find_element(By.ID, "subject-summary").text.startswith("erased 1 prediction(s)")
    journal = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#subject-journal tbody tr")]
    assert any("erasure" in row for row in journal), journal
    assert http.get(f"{stack.gateway}/api/results/predictions/user/{subject}", headers=headers("dpo"),
                    timeout=10).json()["count"] == 0
    assert csp_violations(browser) == []


def test_the_latest_audit_report_is_shown_to_dpo_and_admin(stack, http, browser):
    env = dict(stack.env, PYTHONPATH=str(REPO_ROOT), GATEWAY_URL=stack.gateway)
    made = subprocess.run([sys.executable, "-m", "governance.audit_report", "--no-canary"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    written = Path(re.search(r"^json: (.+)$", made.stdout, re.M).group(1))
    report = json.loads(written.read_text())
    latest = http.get(f"{stack.gateway}/api/reports/latest", headers=headers("dpo"), timeout=10)
    assert latest.status_code == 200 and latest.json()["name"] == written.stem
    page = http.get(f"{stack.gateway}/api/reports/latest.html", headers=headers("admin"), timeout=10)
    assert page.status_code == 200 and "sandbox" in page.headers["Content-Security-Policy"]
    assert "<h1>Audit report" in page.text

    # An admin may do everything on one page: the screenshot in the README is this view.
    open_console(browser, stack, KEYS["admin"])
    subject = f"console-admin-{uuid.uuid4().hex[:6]}"
    upload(browser, BUSY_FRAME, subject)
    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#boxes .box") or False)
    browser.find_element(By.ID, "subject-id").send_keys(subject)
    browser.find_element(By.ID, "subject-lookup").click()
    wait_for(browser, lambda b: b.find_element(By.ID, "subject-result").get_attribute("data-count") == "1", 30)
    browser.find_element(By.ID, "report-load").click()
    wait_for(browser, EC.visibility_of_element_located((By.ID, "report-result")), 30)
    summary = browser.find_element(By.ID, "report-summary").text
    assert summary.startswith(written.stem) and report["compliance"]["overall"].upper() in summary
    rows = browser.find_elements(By.CSS_SELECTOR, "#report-checks tbody tr")
    assert len(rows) == len(report["compliance"]["checks"])
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows] == [c["status"] for c in report["compliance"]["checks"]]
    plots = browser.find_elements(By.CSS_SELECTOR, "#report-plots img")
    assert len(plots) == len(latest.json()["plots"])
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", p) for p in plots)
    assert csp_violations(browser) == []
    # The whole page in one picture: the window's chrome takes part of its height, and the
    # layout reflows on a resize, so grow the window until the page fits (capped).
    for _ in range(3):
        height = browser.execute_script("return document.documentElement.scrollHeight")
        if height <= browser.execute_script("return window.innerHeight"):
            break
        outer = browser.get_window_size()["height"] - browser.execute_script("return window.innerHeight")
        browser.set_window_size(1400, min(height + outer, 2600))
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT_DIR / "console.png"))
    browser.set_window_size(1400, 1000)
