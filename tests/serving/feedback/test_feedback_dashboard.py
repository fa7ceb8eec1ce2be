"""The dashboard's feedback controls in headless Chromium (Playwright), on the web routes without Ray:
a clinician reviews a finding on the worklist (disagree, wrong location) and marks a ward alert
not helpful; both are stored, and the page runs under the strict Content-Security-Policy."""
from __future__ import annotations

import pytest

from clinical_data import FLAG_ID, fill
from serving.feedback.store import FeedbackStore
from serving.store import Store
from web_app import CHROMIUM, CHROMIUM_ARGS, WebApp, require_browser, sign_in



@pytest.fixture(scope="module")
def web(tmp_path_factory):
    require_browser()
    root = tmp_path_factory.mktemp("feedback-dashboard")
    store = Store(root / "medgate.sqlite3")
    data = fill(store)
    store.close()
    with WebApp(root) as app:
        yield app, data


@pytest.fixture
def page(web):
    from playwright.sync_api import sync_playwright

    app, _ = web
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1180, "height": 820}, locale="en-GB")
        page = context.new_page()
        refused = []
        page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
        sign_in(page, app.url, "clinician")
        yield page
        browser.close()
        assert refused == []


def test_a_clinician_reviews_a_finding_and_an_alert_from_the_dashboard(web, page, tmp_path):
    app, data = web
    page.goto(f"{app.url}/?study={data['study_uid']}#worklist")  # a CDS Hooks card's link
    assert page.wait_for_selector("tr.linked").get_attribute("data-study") == data["study_uid"]
    page.click('button.fb[data-finding="1"]')
    page.select_option("#review-verdict", "disagree")
    page.select_option("#review-reason", "wrong-location")
    page.fill("#review-comment", "lesion is in the left lung")
    page.click('#review-form button[value="send"]')
    page.wait_for_selector("#studies .verdict")
    assert "Disagree (Wrong location)" in page.inner_text("#studies")
    page.screenshot(path=str(tmp_path / "worklist-review.png"))
    [verdict] = FeedbackStore(app.context.db_path).of_study(data["study_uid"])
    assert (verdict.verdict, verdict.reason, verdict.who) == ("disagree", "wrong-location", "clinician user")
    assert verdict.target == f"Observation/{data['observations'][0]['id']}"

    page.goto(app.url + "/#ward")
    page.click(".alerts li button.fb:text('Not helpful')", timeout=30_000)
    page.wait_for_selector(".alerts li .verdict")
    [alert] = FeedbackStore(app.context.db_path).of_target(f"Flag/{FLAG_ID}")
    assert (alert.verdict, alert.role) == ("not-helpful", "clinician")
