"""The audit pack as a person reads it: `python governance/audit_report.py` (the seed's
command) on the live stack, the HTML opened in real headless chromium (selenium and
Debian's chromium-driver), the PDF counted page by page."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pypdf import PdfReader

from tests.conftest import REPO_ROOT, frame, headers

SECTIONS = ("summary", "dsr", "art30", "dpia", "annex-iv", "model", "usage", "performance", "evidence", "appendix")
RAW_MARKDOWN = re.compile(r"^\s*(#{1,6} |\|.*\||[-*] \[[ x]\]|```)|\*\*[^*]+\*\*|`[^`]+`|!\[[^\]]*\]\(", re.MULTILINE)
RAW_JSON = re.compile(r"\{\s*\"[^\"]+\"\s*:|\[\s*\{")


@pytest.fixture(scope="module")
def pack(stack, http):
    user = f"pack-{uuid.uuid4().hex[:8]}"
    for name in ("vid_4_1000.jpg", "vid_4_10000.jpg"):
        answer = http.post(f"{stack.gateway}/api/detect", headers=headers("client"),
                           files={"image": ("f.jpg", frame(name), "image/jpeg")}, data={"user_id": user})
        assert answer.status_code == 201, answer.text
    request_id = answer.json()["request_id"]
    for role, body in (("client", {"correct": False, "reason": "missed a car"}),
                       ("dpo", {"correct": True, "reason": "reviewed by the DPO"})):
        assert http.post(f"{stack.gateway}/api/results/predictions/{request_id}/feedback", headers=headers(role),
                         json=body).status_code == 201
    run = subprocess.run([sys.executable, "governance/audit_report.py"], cwd=REPO_ROOT, capture_output=True, text=True,
                         env={**stack.env, "PYTHONPATH": str(REPO_ROOT), "GATEWAY_URL": stack.gateway}, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    paths = {kind: Path(path) for kind, path in re.findall(r"^(json|markdown|html|pdf): (\S+)$", run.stdout, re.MULTILINE)}
    assert set(paths) == {"json", "markdown", "html", "pdf"}, run.stdout + run.stderr
    return json.loads(paths["json"].read_text()), paths


@pytest.fixture(scope="module")
def browser(pack):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    driver.get(pack[1]["html"].resolve().as_uri())
    yield driver
    driver.quit()


def test_the_summary_page_matches_the_json(pack, browser, stack):
    report, _ = pack
    comp = report["compliance"]
    assert browser.find_element("id", "overall").text.lower() == f"overall: {comp['overall'].replace('_', ' ')}"
    counts = {el.get_attribute("class").split("count-")[1]: int(el.text)
              for el in browser.find_elements("css selector", "#counts .count")}
    assert counts == comp["summary"] and sum(counts.values()) == len(comp["checks"])
    assert int(browser.find_element("id", "check-total").text) == len(comp["checks"])
    rows = browser.find_elements("css selector", "#summary table tr")[1:]
    assert len(rows) == len(comp["checks"])
    for row, check in zip(rows, comp["checks"]):
        cells = row.find_elements("tag name", "td")
        status = cells[0].find_element("class name", "badge").get_attribute("class")
        assert f"status-{check['status']}" in status
        assert cells[1].text == check["title"] and cells[3].text == check["owner"] and cells[5].text == check["due"]
        assert cells[2].text and cells[4].text  # a finding in words and an action
        link = cells[1].find_element("tag name", "a").get_attribute("href")
        assert browser.find_elements("id", link.split("#")[1])  # the line links to its evidence
    # under var/reports, where the audit's own output lives (the audit flags other image files under var/)
    browser.save_screenshot(str(stack.var_dir / "reports" / "audit_pack.png"))


def test_no_section_is_raw_markdown_or_json_outside_the_appendix(browser, pack):
    found = [s.get_attribute("id") for s in browser.find_elements("tag name", "section")]
    assert found == list(SECTIONS)
    for section in SECTIONS[:-1]:
        text = browser.find_element("id", section).text
        assert text.strip(), section
        assert not RAW_MARKDOWN.search(text), (section, RAW_MARKDOWN.search(text).group())
        assert not RAW_JSON.search(text), (section, RAW_JSON.search(text).group())
    appendix = browser.find_element("id", "appendix")
    assert appendix.find_element("tag name", "details").get_attribute("open") is None  # collapsed
    raw = browser.execute_script("return document.getElementById('raw-json').textContent")
    assert json.loads(raw)["compliance"]["summary"] == pack[0]["compliance"]["summary"]


def test_every_image_loads_and_has_a_caption(browser):
    images = browser.find_elements("tag name", "img")
    assert len(images) >= 4
    for image in images:
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image), \
            image.get_attribute("alt")
        assert image.get_attribute("src").startswith("data:image/png;base64,")  # self-contained
        caption = image.find_element("xpath", "following-sibling::figcaption").text
        assert image.get_attribute("alt") in caption and len(caption) > len(image.get_attribute("alt")) + 20


def test_every_claim_links_to_its_check_or_says_it_has_none(browser, pack):
    checks = {c["id"] for c in pack[0]["compliance"]["checks"]}
    rows = browser.find_elements("css selector", "#art30 tr, #dpia tr, #annex-iv tr")
    claims = [r for r in rows if r.find_elements("tag name", "td")]
    assert len(claims) >= 20
    unmeasured = 0
    for row in claims:
        measured_by = row.find_elements("tag name", "td")[1]
        links = [a.get_attribute("href").split("#check-")[1] for a in measured_by.find_elements("tag name", "a")]
        if not links:
            assert "declared, not measured" in measured_by.text
            unmeasured += 1
        assert set(links) <= checks
    assert 0 < unmeasured < len(claims)


def test_the_model_section_reads_the_served_version(pack, browser):
    report, _ = pack
    model = report["model"]
    assert model["metadata_found"] and model["version"] in report["usage"]["model_versions"]
    section = browser.find_element("id", "model").text
    assert re.search(rf"version served\s+{model['version']}\b", section), section[:300]
    for key, label in (("crossval", "Cross-validation"), ("calibration", "Calibration")):
        if model[key] == "not measured":
            assert f"{label}: not measured" in section
        else:
            assert isinstance(model[key], dict)
    if isinstance(model["calibration"], dict):
        assert browser.find_elements("css selector", "#model img[alt^='Reliability diagram']")
    validation = model["validation"]
    if isinstance(validation, dict) and validation.get("slices"):  # a version with a held-out block of its own
        slices = validation["slices"]
    else:  # trained on every frame: the cross-validated figures and slices are the ones to report
        assert f"{model['crossval']['pooled']['ap50']:.3f}" in section, section[:600]
        slices = model["crossval"]["pooled"]["slices"]
    rows = browser.find_elements("xpath", "//h3[@id='slices']/following-sibling::table[1]//tr[td]")
    assert [r.find_elements("tag name", "td")[0].text for r in rows] == list(slices)
    assert [r.find_elements("tag name", "td")[2].text for r in rows] == [f"{s['ap50']:.3f}" if s["ap50"] is not None
                                                                         else "n/a" for s in slices.values()]


def test_the_pdf_has_a_page_per_section(pack):
    pages = PdfReader(str(pack[1]["pdf"])).pages
    assert len(pages) >= len(SECTIONS)
    text = " ".join(page.extract_text() for page in pages)
    for title in ("Audit report", "Data-subject requests handled", "GDPR Art. 30", "Art. 35", "Annex IV",
                  "Model — the served version", "Evidence per check"):
        assert title in text, title
