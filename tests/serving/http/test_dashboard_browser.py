"""The dashboard in headless Chromium (Playwright) against a running ``medgate serve``.

A deteriorating vitals stream published over MQTT turns its bed red on the ward board (live, over
SSE); a chest X-ray pushed with DCMTK storescu shows up on the worklist with its overlay; the
language switch works.  Screenshots go to the test's tmp folder (and to docs/ with
``MEDGATE_UPDATE_SCREENSHOTS=1``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import requests

from dicom_testdata import make_photo_dataset
from peers import DCMTK_ENV, find_peer, free_port, wait_until
from server_process import MEDGATE, ServerProcess
from training.synthetic.cxr import generate_cxr
from training.synthetic.dicom import make_dx_dataset
from training.synthetic.vitals import vitals_course
from web_app import CHROMIUM, CHROMIUM_ARGS, require_browser

TOKENS = {"clinician": "dashboard-clinician-token-0123", "admin": "dashboard-admin-token-01234567",
          "engineer": "dashboard-engineer-token-01234"}
DOCS = Path(__file__).resolve().parents[3] / "docs"
DOC_SCREENSHOTS = ("dashboard-ward.png", "dashboard-worklist.png")  # kept under docs/
RED = "rgb(198, 40, 40)"  # --high in style.css


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_browser()
    if find_peer("storescu") is None:
        pytest.skip(reason="storescu not installed (Debian package dcmtk)")
    root = tmp_path_factory.mktemp("dashboard")
    config = {
        "state_dir": str(root / "var"),
        "dicom": {"ae_title": "MEDGATE", "port": free_port()},
        "http": {"port": free_port()},
        "mqtt": {"url": None, "embedded_port": free_port(), "topic_prefix": "medgate"},
        "fhir": {"base_url": None},
        "auth": {"tokens": [{"token": t, "role": r, "name": f"{r} (test)"} for r, t in TOKENS.items()]},
    }
    process = ServerProcess(config, root)
    try:
        process.start()
        yield {"process": process, "config": config, "root": root,
               "url": f"http://127.0.0.1:{config['http']['port']}"}
    finally:
        process.stop()
        print(process.log_tail(2000))


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1180, "height": 820}, locale="en-GB")  # a 11" tablet
    page = context.new_page()
    refused = []  # Content-Security-Policy violations the browser reports
    page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text
            else None)
    response = page.goto(server["url"] + "/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.click("button[data-lang=en]")
    page.fill("#token", TOKENS["clinician"])
    page.click("#login button[type=submit]")
    page.wait_for_selector("#tabs:not([hidden])")
    assert not page.is_visible("#login")
    assert not page.is_visible('#tabs a[data-tab="system"]')  # not a clinician's page
    yield page
    context.close()
    assert refused == []  # the dashboard runs under the strict policy


def shoot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=False)
    print(f"screenshot: {path}")
    if os.environ.get("MEDGATE_UPDATE_SCREENSHOTS") == "1" and name in DOC_SCREENSHOTS:
        shutil.copy(path, DOCS / name)
    return path


def publish(server, bed: str, patient: str, deteriorating: bool, n: int = 60) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-dashboard-{bed}")
    client.connect("127.0.0.1", server["config"]["mqtt"]["embedded_port"])
    client.loop_start()
    try:
        for payload in vitals_course(n, patient_id=patient, deteriorating=deteriorating, seed=3,
                                     device=f"monitor-{bed}"):
            client.publish(f"medgate/ward-a/{bed}/vitals", json.dumps(payload), qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def test_ward_board_bed_turns_red(server, page, tmp_path):
    page.goto(server["url"] + "/#ward")
    publish(server, "bed-02", "079200000002", deteriorating=False)
    page.wait_for_selector('.tile[data-bed="ward-a/bed-02"]', timeout=60_000)
    assert "band-high" not in page.get_attribute('.tile[data-bed="ward-a/bed-02"]', "class")
    publish(server, "bed-07", "079200000007", deteriorating=True)
    tile = page.wait_for_selector('.tile[data-bed="ward-a/bed-07"].band-high', timeout=90_000)
    header = tile.query_selector("header")
    assert header.evaluate("h => getComputedStyle(h).backgroundColor") == RED
    assert tile.query_selector(".vital svg.spark polyline") is not None  # sparklines drawn
    assert "NEWS2" in header.inner_text()
    assert page.get_attribute("#live", "data-state") == "live"  # updates came over SSE
    shoot(page, tmp_path, "dashboard-ward.png")
    page.wait_for_selector('#ward-filter option[value="ward-a"]', state="attached", timeout=30_000)
    page.select_option("#ward-filter", "ward-a")  # a ward's own screen: kept across reloads
    page.reload()
    page.wait_for_selector('.tile[data-bed="ward-a/bed-07"].band-high', timeout=60_000)
    assert page.eval_on_selector("#ward-filter", "s => s.value") == "ward-a"
    page.select_option("#ward-filter", "")
    page.wait_for_selector('.tile[data-bed="ward-a/bed-02"]', timeout=60_000)


def test_worklist_shows_the_overlay(server, page, tmp_path):
    ds = make_dx_dataset(generate_cxr(np.random.default_rng(5), tb=True).pixels, patient_id="079300000005")
    path = tmp_path / "cxr.dcm"
    ds.save_as(path, enforce_file_format=True)
    push = subprocess.run([find_peer("storescu"), "-aet", "MODALITY", "-aec", "MEDGATE", "127.0.0.1",
                           str(server["config"]["dicom"]["port"]), str(path)], env=DCMTK_ENV,
                          capture_output=True, text=True, timeout=60)
    assert push.returncode == 0, push.stderr
    page.goto(server["url"] + "/#worklist")
    row = f'tr[data-study="{ds.StudyInstanceUID}"]'
    image = page.wait_for_selector(f"{row} img.overlay", timeout=120_000)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image, timeout=30_000)
    assert "079300000005" in page.inner_text(row)
    assert page.query_selector(f'{row} a[href*="/fhir/DiagnosticReport/"]') is not None
    shoot(page, tmp_path, "dashboard-worklist.png")


def test_worklist_shows_a_refused_study_with_its_reason_as_text(server, page, tmp_path):
    """A MONOCHROME photo routed to derm is refused at intake: its study is listed ``refused`` with the
    reason and the sender, whose AE title (here markup) is shown as text, never as markup."""
    ds = make_photo_dataset(np.full((48, 48, 3), 120, np.uint8), photometric="MONOCHROME2")
    path = tmp_path / "mono.dcm"
    ds.save_as(path, enforce_file_format=True)
    subprocess.run([find_peer("storescu"), "-aet", "<img src=x>", "-aec", "MEDGATE", "127.0.0.1",
                    str(server["config"]["dicom"]["port"]), str(path)], env=DCMTK_ENV,
                   capture_output=True, text=True, timeout=60)
    page.goto(server["url"] + "/#worklist")
    row = f'tr[data-study="{ds.StudyInstanceUID}"]'
    page.wait_for_selector(f"{row} .st-refused", timeout=30_000)
    assert page.inner_text(f"{row} .st-refused") == "refused"
    reason = page.inner_text(f"{row} .reason")
    assert reason.startswith("0xC001 NOT_READABLE_BY_MODEL from <img src=x>: routed to derm")
    assert page.query_selector(f"{row} img") is None


def test_language_switch(server, page, tmp_path):
    page.click("button[data-lang=vi]")
    assert page.inner_text('#tabs a[data-tab="ward"]') == "Bảng theo dõi khoa"
    assert page.get_attribute("html", "lang") == "vi"
    shoot(page, tmp_path, "dashboard-vi.png")
    page.click("button[data-lang=en]")
    assert page.inner_text('#tabs a[data-tab="ward"]') == "Ward board"


def test_engineer_sees_only_the_system_page(server, browser):
    context = browser.new_context()
    page = context.new_page()
    page.goto(server["url"] + "/")
    page.fill("#token", TOKENS["engineer"])
    page.click("#login button[type=submit]")
    page.wait_for_selector("#models tr", timeout=30_000)
    assert "tb" in page.inner_text("#models")
    page.goto(server["url"] + "/#ward")
    assert page.is_visible("#forbidden")
    context.close()


def test_dashboard_reads_are_audited_and_chain_verifies(server):
    result = subprocess.run(MEDGATE + ["audit", "verify"], env=server["process"].env, capture_output=True,
                            text=True, timeout=120)
    print(result.stdout)
    assert result.returncode == 0 and "intact" in result.stdout
    status, events = server["process"].http_get("/fhir/AuditEvent?_count=500", token=TOKENS["admin"])
    assert status == 200 and events["total"] > 0
    actions = {e["resource"]["subtype"][0]["code"] for e in events["entry"]}
    assert actions <= {"read", "search-type"}
    print(f"audit rows after the dashboard tests: {events['total']}")


def test_sign_out_revokes_the_session_cookie(server, page):
    url = server["url"]
    [cookie] = [c for c in page.context.cookies() if c["name"] == "medgate_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] not in TOKENS.values()
    assert requests.get(url + "/v1/ward", cookies={"medgate_session": cookie["value"]}, timeout=30).status_code == 200
    page.click("#logout")
    page.wait_for_selector("#login", state="visible")
    wait_until(lambda: requests.get(url + "/v1/ward", cookies={"medgate_session": cookie["value"]},
                                    timeout=30).status_code == 401, timeout_s=10)
