"""The page at ``/`` in a real browser: Debian's chromium, headless, driven by playwright, against the
running server (with its API key typed into the page). Types a query, sees results, gets a user's
recommendations, opens an explanation and its graph."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from kgrec.serving.api import Scorer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (bash .ci/setup-browser-test-deps.sh installs it; CI fails instead)",
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url + "/")
    page.fill("#api-key", server.headers["X-API-Key"])
    page.dispatch_event("#api-key", "change")
    yield page
    context.close()
    assert errors == []


def test_search_recommend_and_explain_in_the_browser(page, http_artifacts, tmp_path):
    from playwright.sync_api import expect

    scorer = Scorer.load(http_artifacts["a"])
    expect(page.locator("#model-info")).to_contain_text(scorer.model_version)
    assert page.locator("#example-users option").count() > 0

    page.fill("#query", "cordless drill")
    page.press("#query", "Enter")
    results = page.locator("#search-results li.result")
    expect(results).to_have_count(10)
    want = [p for p, _ in scorer.search("cordless drill", k=10)]
    assert [results.nth(i).get_attribute("data-product-id") for i in range(10)] == want
    expect(results.first.locator(".title")).to_have_text(scorer.title(want[0]))

    results.first.locator(".similar-button").click()
    expect(page.locator("#similar li.result")).to_have_count(8)
    assert page.locator("#similar li.result").first.get_attribute("data-product-id") == scorer.similar([want[0]], k=1)[0][0][0]

    page.fill("#user", "U1")
    page.click("#user-form button")
    expect(page.locator("#rec-source")).to_have_text("history")
    recs = page.locator("#rec-items li.result")
    expect(recs).to_have_count(10)
    rec = scorer.recommend(["U1"], k=10)[0]
    assert [recs.nth(i).get_attribute("data-product-id") for i in range(10)] == [p for p, _ in rec.items]

    # the first recommendation with a knowledge-graph path
    explained = next(i for i, (p, _) in enumerate(rec.items) if scorer.explain("U1", p, max_paths=4).paths)
    recs.nth(explained).locator(".explain-button").click()
    paths = page.locator("#explain .path")
    expect(paths.first.locator("svg.path-graph")).to_be_visible()
    want_paths = scorer.explain("U1", rec.items[explained][0], max_paths=4).paths
    expect(paths).to_have_count(len(want_paths))
    first = want_paths[0]
    assert paths.first.locator("svg circle").count() == len(first.nodes)
    assert paths.first.locator("svg line").count() == len(first.rels)
    expect(paths.first.locator("pre.cypher")).to_contain_text(first.cypher)
    expect(paths.first.locator("pre.cypher")).to_contain_text(":params {")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_a_session_visitor_and_an_error_in_the_browser(page):
    from playwright.sync_api import expect

    page.fill("#user", "a-visitor")
    page.fill("#session", "P01, P02")
    page.click("#user-form button")
    expect(page.locator("#rec-source")).to_have_text("session")
    page.fill("#session", "P01, NOT-A-PRODUCT")
    page.click("#user-form button")
    expect(page.locator("#error")).to_contain_text("session[1]")
