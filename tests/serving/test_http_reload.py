"""Hot reload against a real server: swapping artifacts under concurrent load fails no request and
mixes no versions; a bad artifact is refused while the old one keeps serving; a watched folder."""
from __future__ import annotations

import asyncio
import json
import shutil
import time

import httpx
import pytest

from kgrec.serving.api import Scorer


@pytest.fixture(scope="module")
def watched(http_artifacts, tmp_path_factory):
    """A folder holding a copy of artifact ``a``, which the server watches."""
    folder = tmp_path_factory.mktemp("watched") / "artifact"
    shutil.copytree(http_artifacts["a"], folder)
    return folder


@pytest.fixture(scope="module")
def reloading(watched, tmp_path_factory, server_process):
    with server_process(watched, tmp_path_factory.mktemp("reload") / "server.log", None, "--watch", "0.2",
                        "--max-wait-ms", "3") as running:
        yield running


@pytest.fixture(scope="module")
def scorers(http_artifacts):
    return {name: Scorer.load(path) for name, path in http_artifacts.items()}


def _version(server) -> str:
    return httpx.get(f"{server.url}/readyz").json()["model_version"]


def test_reload_under_load_fails_nothing_and_mixes_no_versions(reloading, http_artifacts, watched, scorers):
    va, vb = scorers["a"].model_version, scorers["b"].model_version
    assert va != vb and _version(reloading) == va
    users = [u for u in scorers["a"].user_ids if scorers["a"].user_history(u)]
    want = {v: {r.user_id: [p for p, _ in r.items] for r in s.recommend(users, k=5)} for v, s in
            ((va, scorers["a"]), (vb, scorers["b"]))}
    assert want[va] != want[vb]  # the two models rank differently, so a mixed answer would show
    records: list[tuple[float, float, int, str | None, str, list[str]]] = []
    swaps: list[tuple[float, float, str]] = []

    async def client_loop(client: httpx.AsyncClient, worker: int, stop: asyncio.Event):
        for i in range(400):  # bounded: at most 400 requests per client
            if stop.is_set():
                return
            user = users[(worker * 7 + i) % len(users)]
            started = time.monotonic()
            response = await client.post("/v1/recommend", json={"user_ids": [user], "k": 5})
            body = response.json() if response.status_code == 200 else {}
            items = [x["product_id"] for x in body["results"][0]["items"]] if body else []
            records.append((started, time.monotonic(), response.status_code, body.get("model_version"), user, items))

    async def run():
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=reloading.url, timeout=30) as client:
            workers = [asyncio.create_task(client_loop(client, w, stop)) for w in range(16)]
            for target in (http_artifacts["b"], watched):  # a -> b -> a, each while 16 clients keep asking
                await asyncio.sleep(0.7)
                started = time.monotonic()
                response = await client.post("/admin/reload", json={"artifact": str(target)})
                assert response.status_code == 200, response.text
                swaps.append((started, time.monotonic(), response.json()["model_version"]))
            await asyncio.sleep(0.7)
            stop.set()
            await asyncio.gather(*workers)

    asyncio.run(asyncio.wait_for(run(), 120))
    assert [v for _, _, v in swaps] == [vb, va]
    assert len(records) > 100
    assert [r for r in records if r[2] != 200] == []
    for started, ended, _, version, user, items in records:
        assert items == want[version][user]  # every answer is entirely one version's
        if started > swaps[0][1] and ended < swaps[1][0]:
            assert version == vb  # asked after the first swap finished, before the second began
        if started > swaps[1][1]:
            assert version == va
    assert {r[3] for r in records} == {va, vb}
    metrics = httpx.get(f"{reloading.url}/metrics").text
    assert 'kgrec_reloads_total{outcome="ok"} 2.0' in metrics


def test_a_bad_artifact_is_refused_and_the_old_one_keeps_serving(reloading, http_artifacts, tmp_path, scorers):
    before = _version(reloading)
    response = httpx.post(f"{reloading.url}/admin/reload", json={"artifact": str(tmp_path / "nothing")})
    assert response.status_code == 422 and response.json()["fields"][0]["field"] == "artifact"
    broken = tmp_path / "broken"
    shutil.copytree(http_artifacts["b"], broken)
    config = json.loads((broken / "config.json").read_text())
    config["max_history"] = 7  # edited by hand: the checksum no longer matches
    (broken / "config.json").write_text(json.dumps(config))
    response = httpx.post(f"{reloading.url}/admin/reload", json={"artifact": str(broken)})
    assert response.status_code == 422 and "checksum" in response.json()["error"], response.text
    assert _version(reloading) == before
    ok = httpx.post(f"{reloading.url}/v1/recommend", json={"user_ids": ["U1"], "k": 2})
    assert ok.status_code == 200 and ok.json()["model_version"] == before
    assert "Traceback" not in response.text
    assert 'kgrec_reloads_total{outcome="failed"} 1.0' in httpx.get(f"{reloading.url}/metrics").text


def test_a_watched_folder_reloads_when_a_new_artifact_lands(reloading, http_artifacts, watched, scorers):
    assert _version(reloading) == scorers["a"].model_version
    staged = watched.with_name("staged")
    shutil.copytree(http_artifacts["b"], staged)
    shutil.rmtree(watched)  # as save_artifact(overwrite=True) does: remove, then rename into place
    staged.rename(watched)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _version(reloading) != scorers["b"].model_version:
        time.sleep(0.1)
    assert _version(reloading) == scorers["b"].model_version
    body = httpx.post(f"{reloading.url}/v1/recommend", json={"user_ids": ["U2"], "k": 4}).json()
    assert [i["product_id"] for i in body["results"][0]["items"]] == [p for p, _ in scorers["b"].recommend(["U2"], k=4)[0]]
