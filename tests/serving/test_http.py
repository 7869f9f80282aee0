"""The HTTP service against a real server process: every route's answers equal the in-process
Scorer's, bad input answers JSON 4xx naming the field, the API key, metrics, concurrent batching."""
from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest

from kgrec.serving.api import Scorer


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def scorer(http_artifacts):
    return Scorer.load(http_artifacts["a"])


def _pairs(items):
    return [(i["product_id"], i["score"]) for i in items]


def _same(got, want):
    # ids exactly; scores to float32 rounding (a text batch pads its queries; hybrid z-scores magnify that)
    assert [p for p, _ in got] == [p for p, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-4, abs=1e-4)


def test_recommend_answers_what_the_scorer_answers(client, scorer):
    users = ["U1", "U2", "nobody"]
    body = client.post("/v1/recommend", json={"user_ids": users, "k": 5, "include_history": True}).json()
    assert body["model_version"] == scorer.model_version
    want = scorer.recommend(users, k=5)
    assert [r["user_id"] for r in body["results"]] == users
    assert [r["source"] for r in body["results"]] == ["history", "history", "popularity"]
    for got, rec in zip(body["results"], want):
        _same(_pairs(got["items"]), rec.items)
        assert [i["title"] for i in got["items"]] == [scorer.title(p) for p, _ in rec.items]
    assert [h["product_id"] for h in body["results"][0]["history"]] == scorer.user_history("U1")[-10:]


@pytest.mark.parametrize("session", [["P01", "P02"], {"visitor": ["P03"]}])
def test_recommend_with_session_and_filters(client, scorer, session):
    request = {"user_ids": ["visitor", "U3"], "k": 4, "session": session, "filters": {"brand": ["Acme", "Bolt"]}}
    body = client.post("/v1/recommend", json=request).json()
    want = scorer.recommend(["visitor", "U3"], k=4, session=session, filters={"brand": ["Acme", "Bolt"]})
    for got, rec in zip(body["results"], want):
        assert got["source"] == rec.source
        _same(_pairs(got["items"]), rec.items)
    assert {scorer.brand[scorer.product_ids.index(i["product_id"])] for r in body["results"] for i in r["items"]} <= {"Acme", "Bolt"}


@pytest.mark.parametrize("lexical_weight", [None, 0.0, 0.7])
def test_search_lexical_weight_null_means_the_artifacts_weight(client, scorer, lexical_weight):
    body = client.post("/v1/search", json={"queries": ["cordless drill", "gloves"], "k": 5,
                                           "lexical_weight": lexical_weight}).json()
    used = scorer.lexical_weight if lexical_weight is None else lexical_weight
    assert scorer.lexical_weight == 0.25 and body["lexical_weight"] == used
    for got, query in zip(body["results"], ["cordless drill", "gloves"]):
        assert got["query"] == query
        _same(_pairs(got["items"]), scorer.search(query, k=5, lexical_weight=used))


def test_search_personalised_by_user_and_by_session(client, scorer):
    body = client.post("/v1/search", json={"queries": ["drill"], "k": 5, "user_id": "U2", "user_weight": 0.8}).json()
    _same(_pairs(body["results"][0]["items"]), scorer.search("drill", k=5, user_id="U2", user_weight=0.8))
    assert body["user_weight"] == 0.8
    body = client.post("/v1/search", json={"queries": ["drill"], "k": 5, "session": ["P04", "P05"]}).json()
    _same(_pairs(body["results"][0]["items"]), scorer.search("drill", k=5, session=["P04", "P05"]))


def test_similar_score_and_explain(client, scorer):
    body = client.post("/v1/similar", json={"product_ids": ["P01", "P07"], "k": 3}).json()
    for got, want in zip(body["results"], scorer.similar(["P01", "P07"], k=3)):
        _same(_pairs(got["items"]), want)
    assert [r["product_id"] for r in body["results"]] == ["P01", "P07"]

    body = client.post("/v1/score", json={"user_ids": ["U1", "U2"], "product_ids": ["P03", "P01"]}).json()
    want = scorer.score([("U1", "P03"), ("U1", "P01"), ("U2", "P03"), ("U2", "P01")])
    got = [i["score"] for r in body["results"] for i in r["items"]]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert [i["product_id"] for i in body["results"][0]["items"]] == ["P03", "P01"]

    rec = scorer.recommend(["U1"], k=2)[0]
    targets = [p for p, _ in rec.items]
    body = client.post("/v1/explain", json={"user_id": "U1", "product_ids": targets, "max_paths": 3}).json()
    assert body["model_version"] == scorer.model_version
    for got, product in zip(body["results"], targets):
        want = scorer.explain("U1", product, max_paths=3)
        assert got["product_id"] == product and got["source"] == want.source
        assert [p["text"] for p in got["paths"]] == [p.text for p in want.paths]
        assert [p["cypher"] for p in got["paths"]] == [p.cypher for p in want.paths]
        for path, kg in zip(got["paths"], want.paths):
            assert [(n["label"], n["id"]) for n in path["nodes"]] == kg.nodes
            assert path["browser_params"].startswith(":params {")


def test_service_routes(client, server, scorer):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok", "model_version": scorer.model_version}
    assert httpx.get(f"{server.url}/readyz").json()["model_version"] == scorer.model_version
    info = client.get("/v1/model").json()
    assert info["model"] == "fused" and info["products"] == scorer.num_products and info["users"] == len(scorer.user_ids)
    assert info["example_users"] and all(scorer.user_history(u) for u in info["example_users"])
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/recommend", "/v1/search", "/v1/similar", "/v1/score", "/v1/explain", "/admin/reload"} <= set(spec["paths"])
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and 'id="search-form"' in page.text
    assert httpx.get(f"{server.url}/page/app.js").status_code == 200


BAD = [
    ("/v1/recommend", {"user_ids": [], "k": 5}, "user_ids"),
    ("/v1/recommend", {"user_ids": ["U1"], "k": 0}, "k"),
    ("/v1/recommend", {"user_ids": ["U1"], "k": 1001}, "k"),
    ("/v1/recommend", {"user_ids": ["U1"], "k": "ten"}, "k"),
    ("/v1/recommend", {"user_ids": "U1"}, "user_ids"),
    ("/v1/recommend", {"user_ids": ["U1", ""]}, "user_ids[1]"),
    ("/v1/recommend", {"user_ids": ["U1"], "session": ["P01", "NOPE"]}, "session[1]"),
    ("/v1/recommend", {"user_ids": ["U1"], "session": {"U9": ["P01"]}}, "session"),
    ("/v1/recommend", {"user_ids": ["U1"], "filters": {"brand": "NoSuchBrand"}}, "filters"),
    ("/v1/recommend", {"user_ids": ["U1"], "filters": {"colour": "red"}}, "filters.colour"),
    ("/v1/recommend", {"user_ids": ["U1"], "surprise": 1}, "surprise"),
    ("/v1/search", {"queries": ["drill"], "user_weight": math.nan}, "user_weight"),
    ("/v1/search", {"queries": ["drill"], "user_weight": math.inf}, "user_weight"),
    ("/v1/search", {"queries": ["drill"], "lexical_weight": 1.5}, "lexical_weight"),
    ("/v1/search", {"queries": ["   "]}, "queries[0]"),
    ("/v1/search", {"queries": ["x" * 513]}, "queries[0]"),
    ("/v1/search", {"queries": []}, "queries"),
    ("/v1/similar", {"product_ids": ["P01", "P99"]}, "product_ids[1]"),
    ("/v1/score", {"user_ids": ["ghost"], "product_ids": ["P01"]}, "user_ids[0]"),
    ("/v1/explain", {"user_id": "ghost", "product_ids": ["P01"]}, "user_id"),
    ("/v1/explain", {"user_id": "U1", "product_ids": ["P01"], "max_paths": 0}, "max_paths"),
]


@pytest.mark.parametrize(("route", "body", "field"), BAD, ids=[f"{r}:{f}" for r, _, f in BAD])
def test_bad_requests_answer_422_naming_the_field(client, route, body, field):
    # json.dumps writes NaN / Infinity literals, as a careless client would
    response = client.post(route, content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["status"] == 422 and field in [f["field"] for f in error["fields"]], error
    assert "Traceback" not in response.text


def test_malformed_and_oversized_bodies(client):
    response = client.post("/v1/recommend", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["fields"][0]["field"] == "body"
    huge = json.dumps({"user_ids": ["U" * 200] * 6000}).encode()
    response = client.post("/v1/recommend", content=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["fields"] == [{"field": "body", "message": "too large"}]
    response = client.get("/v1/no-such-route")
    assert response.status_code == 404 and response.json()["status"] == 404


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}])
def test_api_key_is_needed_when_set(server, headers):
    response = httpx.post(f"{server.url}/v1/recommend", json={"user_ids": ["U1"]}, headers=headers)
    assert response.status_code == 401 and response.json()["fields"][0]["field"] == "X-API-Key"
    assert httpx.post(f"{server.url}/admin/reload", json={}, headers=headers).status_code == 401
    assert httpx.get(f"{server.url}/healthz", headers=headers).status_code == 200  # probes need no key
    ok = httpx.post(f"{server.url}/v1/recommend", json={"user_ids": ["U1"]}, headers=server.headers)
    assert ok.status_code == 200


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, scorer):
    users = scorer.user_ids * 3

    async def run():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=30) as c:
            return await asyncio.gather(*(c.post("/v1/recommend", json={"user_ids": [u], "k": 3}) for u in users))

    responses = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses)
    want = {r.user_id: r.items for r in scorer.recommend(scorer.user_ids, k=3)}
    for user, response in zip(users, responses):
        result = response.json()["results"][0]
        assert result["user_id"] == user
        _same(_pairs(result["items"]), want[user])
    metrics = httpx.get(f"{server.url}/metrics").text
    sums = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if line.startswith("kgrec_batch_")}
    calls = sums['kgrec_batch_rows_count{kind="recommend"}']
    rows = sums['kgrec_batch_rows_sum{kind="recommend"}']
    assert rows >= len(users) and calls < rows  # some calls scored several requests together


def test_metrics_count_requests_and_name_the_model(client, server, scorer):
    client.post("/v1/similar", json={"product_ids": ["P01"], "k": 2})
    client.post("/v1/similar", json={"product_ids": ["P01"], "k": 0})
    text = httpx.get(f"{server.url}/metrics").text
    created = scorer.artifact.config["created"]
    assert f'kgrec_model_info{{created="{created}",model="fused",model_version="{scorer.model_version}"}} 1.0' in text
    assert 'kgrec_http_requests_total{method="POST",route="/v1/similar",status="200"}' in text
    assert 'kgrec_http_requests_total{method="POST",route="/v1/similar",status="422"}' in text
    assert 'kgrec_http_request_seconds_bucket{le="0.005",route="/v1/similar"}' in text
    assert 'kgrec_batch_rows_bucket{kind="similar",le="1.0"}' in text
