"""The HTTP service under bounded load on loopback, against calling Scorer in-process in the same run.

1. In process: ``Scorer.recommend`` / ``search`` / ``similar`` on one row and on a batch of
   ``--batch`` rows (p50 per call and per row), the cost the service can at best approach.
2. Over HTTP: the service (``kgrec serve``, a separate process on a free loopback
   port) gets requests of one row each from N concurrent clients (``--clients``, default 1 8 32),
   each sending its next request when the last one answered, for ``--requests`` requests per
   (route, N) or ``--seconds`` at most: p50 / p99 latency, requests/s, errors and the mean batch
   the server formed (its ``kgrec_batch_rows`` metric).
3. Reload under load: ``--reload-clients`` clients ask for recommendations while the artifact is
   reloaded ``--reloads`` times through ``POST /admin/reload``; failed requests are counted.

The load generator is a minimal HTTP/1.1 keep-alive client on asyncio streams (one connection per
client) so that it costs the shared CPU little. ``ratio`` compares the service's cost per row at
N clients (wall seconds / rows answered) with the in-process cost per row of a ``--batch``-row call.
Recommend is loaded twice: one user per request, and ``--wide`` users per request.

Usage::

    python benchmarks/serve.py --artifact runs/artifact            # writes benchmarks/results/serve.json
    python benchmarks/serve.py --artifact runs/artifact --screenshot docs/serve-page.png
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
ROUTES = ("recommend", "search", "similar")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


class Connection:
    """One keep-alive HTTP/1.1 connection: ``await post(path, body) -> (status, json)``."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        payload = json.dumps(body).encode() if body is not None else b""
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        self.writer.write(head + payload)
        await self.writer.drain()
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        data = await self.reader.readexactly(length)
        return status, json.loads(data) if data else {}

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


def _bodies(route: str, scorer, rng: random.Random, count: int, k: int, rows: int = 1) -> list[dict]:
    if route == "recommend":
        users = [u for u in scorer.user_ids if scorer.user_history(u)]
        return [{"user_ids": rng.sample(users, rows), "k": k} for _ in range(count)]
    if route == "search":
        titles = [" ".join(t.split()[:4]) for t in scorer.titles if t.strip()]
        return [{"queries": [rng.choice(titles)], "k": k} for _ in range(count)]
    return [{"product_ids": [rng.choice(scorer.product_ids)], "k": k} for _ in range(count)]


async def _load(port: int, route: str, bodies: list[dict], clients: int, seconds: float,
                during=None, rows: int = 1) -> dict:
    """``clients`` concurrent clients send ``bodies`` (each the next when its last answered)."""
    latencies: list[float] = []
    errors: list[str] = []
    versions: dict[str, int] = {}
    queue = iter(bodies)
    deadline = time.monotonic() + seconds

    async def client() -> None:
        connection = Connection("127.0.0.1", port)
        try:
            for body in queue:
                if time.monotonic() > deadline:
                    return
                start = time.perf_counter()
                try:
                    status, answer = await asyncio.wait_for(connection.request("POST", f"/v1/{route}", body), 30)
                except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as error:
                    errors.append(repr(error))
                    connection = Connection("127.0.0.1", port)
                    continue
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors.append(f"{status}: {answer.get('error')}")
                else:
                    versions[answer["model_version"]] = versions.get(answer["model_version"], 0) + 1
        finally:
            await connection.close()

    start = time.perf_counter()
    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    extra = await during() if during is not None else None
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - start
    return {"route": route, "clients": clients, "rows_per_request": rows, **_stats(latencies),
            "requests_per_s": len(latencies) / wall, "ms_per_row": 1000 * wall / max(len(latencies) * rows, 1),
            "errors": len(errors), "error_examples": errors[:3], "versions": versions, "seconds": wall, "during": extra}


def _metric_sums(port: int, name: str) -> dict[str, tuple[float, float]]:
    """``{kind: (sum, count)}`` of a histogram from ``/metrics``."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, list[float]] = {}
    for part, kind, value in re.findall(rf'{name}_(sum|count)\{{kind="(\w+)"\}} (\S+)', text):
        out.setdefault(kind, [0.0, 0.0])[0 if part == "sum" else 1] = float(value)
    return {k: (v[0], v[1]) for k, v in out.items()}


def in_process(scorer, route: str, rng: random.Random, batch: int, repeats: int, k: int) -> dict:
    """p50 of one-row calls and of ``batch``-row calls of the Scorer (no HTTP)."""
    def call(bodies: list[dict]):
        if route == "recommend":
            return scorer.recommend([b["user_ids"][0] for b in bodies], k=k)
        if route == "search":
            return scorer.search([b["queries"][0] for b in bodies], k=k)
        return scorer.similar([b["product_ids"][0] for b in bodies], k=k)

    singles = _bodies(route, scorer, rng, repeats, k)
    batches = [_bodies(route, scorer, rng, batch, k) for _ in range(max(repeats // 10, 5))]
    for body in singles[:5]:
        call([body])
    one, many = [], []
    for body in singles:
        start = time.perf_counter()
        call([body])
        one.append(time.perf_counter() - start)
    for bodies in batches:
        start = time.perf_counter()
        call(bodies)
        many.append(time.perf_counter() - start)
    single, batched = _stats(one), _stats(many)
    return {"route": route, "single_p50_ms": single["p50_ms"], "batch": batch, "batch_p50_ms": batched["p50_ms"],
            "batch_per_row_ms": batched["p50_ms"] / batch}


def start_server(artifact: Path, port: int, threads: int, max_wait_ms: float, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("KGREC_API_KEY", None)
    handle = log.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "kgrec.cli", "serve", "--artifact", str(artifact), "--port", str(port),
         "--threads", str(threads), "--max-wait-ms", str(max_wait_ms), "--log-level", "warning"],
        stdout=handle, stderr=subprocess.STDOUT, env=env)
    handle.close()
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                return process
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("the server did not get ready in 180 s")


def screenshot(port: int, path: Path, query: str, user: str) -> None:
    """The page after a search, a user's recommendations and an explanation (headless chromium)."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/")
        page.fill("#query", query)
        page.press("#query", "Enter")
        expect(page.locator("#search-results li").first).to_be_visible()
        page.locator("#search-results .similar-button").first.click()
        expect(page.locator("#similar li").first).to_be_visible()
        page.fill("#user", user)
        page.click("#user-form button")
        expect(page.locator("#rec-items li").first).to_be_visible()
        for i in range(page.locator("#rec-items li").count()):
            page.locator("#rec-items .explain-button").nth(i).click()
            page.wait_for_timeout(300)
            if page.locator("#explain svg").count():
                break
        page.screenshot(path=str(path), full_page=True)
        browser.close()


def markdown(payload: dict) -> str:
    lines = ["| route | rows/request | clients | p50 ms | p99 ms | req/s | errors | mean batch rows | ms/row HTTP "
             "| ms/row in-process batched | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = {r["route"]: r for r in payload["in_process"]}
    for r in payload["http"]:
        inproc = base[r["route"]]["batch_per_row_ms"]
        lines.append(f"| {r['route']} | {r['rows_per_request']} | {r['clients']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['requests_per_s']:.0f} | {r['errors']} | {r['mean_batch']:.1f} | {r['ms_per_row']:.3f} | "
                     f"{inproc:.3f} | {r['ms_per_row'] / inproc:.1f}x |")
    lines += ["", "| in process | one row p50 ms | batch | batch p50 ms | ms/row |", "|---|---:|---:|---:|---:|"]
    for r in payload["in_process"]:
        lines.append(f"| {r['route']} | {r['single_p50_ms']:.3f} | {r['batch']} | {r['batch_p50_ms']:.2f} | {r['batch_per_row_ms']:.3f} |")
    reload = payload.get("reload")
    if reload:
        lines += ["", f"Reload under load: {reload['reloads']} reloads while {reload['clients']} clients sent "
                      f"{reload['n']} recommend requests: {reload['errors']} errors, p99 {reload['p99_ms']:.1f} ms, "
                      f"reload {', '.join(f'{s:.2f}' for s in reload['reload_seconds'])} s."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--routes", nargs="+", default=list(ROUTES), choices=ROUTES)
    parser.add_argument("--requests", type=int, default=1500, help="requests per (route, clients) at most")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per (route, clients) at most")
    parser.add_argument("--batch", type=int, default=32, help="rows per in-process batched call")
    parser.add_argument("--wide", type=int, default=32,
                        help="also load recommend with this many users per request (0 = off)")
    parser.add_argument("--repeats", type=int, default=200, help="in-process one-row calls")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, in process and in the server")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="the server's batching window")
    parser.add_argument("--reloads", type=int, default=2)
    parser.add_argument("--reload-clients", type=int, default=8)
    parser.add_argument("--screenshot", type=Path, help="also save a screenshot of the page here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve.json")
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    from kgrec.serving.api import Scorer

    torch.set_num_threads(args.threads)
    scorer = Scorer.load(args.artifact)
    rng = random.Random(args.seed)
    routes = [r for r in args.routes if r != "search" or scorer.can_search]
    baseline = [in_process(scorer, route, rng, args.batch, args.repeats, args.k) for route in routes]

    port = _free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"kgrec-serve-bench-{port}.log"
    server = start_server(args.artifact, port, args.threads, args.max_wait_ms, log)
    http, reload = [], None
    plan = [(route, 1) for route in routes] + ([("recommend", args.wide)] if args.wide and "recommend" in routes else [])
    try:
        for route, rows in plan:
            asyncio.run(_load(port, route, _bodies(route, scorer, rng, 50, args.k, rows), 4, 30))  # warm up
            for clients in args.clients:
                before = _metric_sums(port, "kgrec_batch_rows").get(route, (0.0, 0.0))
                bodies = _bodies(route, scorer, rng, max(args.requests // rows, 100), args.k, rows)
                row = asyncio.run(_load(port, route, bodies, clients, args.seconds, rows=rows))
                after = _metric_sums(port, "kgrec_batch_rows").get(route, (0.0, 0.0))
                row["mean_batch"] = (after[0] - before[0]) / max(after[1] - before[1], 1)
                http.append(row)
                print(f"{route:9s} x{rows:<3d} {clients:3d} clients: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
                      f"{row['requests_per_s']:.0f} req/s, {row['errors']} errors, mean batch {row['mean_batch']:.1f}", flush=True)

        async def reloads():
            seconds = []
            connection = Connection("127.0.0.1", port)
            for _ in range(args.reloads):
                await asyncio.sleep(1.0)
                start = time.perf_counter()
                status, answer = await connection.request("POST", "/admin/reload", {"artifact": str(args.artifact)})
                if status != 200:
                    raise RuntimeError(f"reload answered {status}: {answer}")
                seconds.append(time.perf_counter() - start)
            await connection.close()
            return seconds

        bodies = _bodies("recommend", scorer, rng, 1_000_000, args.k)
        row = asyncio.run(_load(port, "recommend", bodies, args.reload_clients, 2.0 + 3.0 * args.reloads, reloads))
        reload = {"reloads": args.reloads, "clients": args.reload_clients, "n": row["n"], "errors": row["errors"],
                  "error_examples": row["error_examples"], "p99_ms": row["p99_ms"], "reload_seconds": row["during"],
                  "versions": row["versions"]}
        if args.screenshot:
            users = [u for u in scorer.user_ids if len(scorer.user_history(u)) >= 3]
            screenshot(port, args.screenshot, " ".join(scorer.titles[0].split()[:3]), users[0])
    finally:
        server.terminate()
        server.wait(15)
    if "Traceback" in log.read_text():
        raise RuntimeError(f"the server logged a traceback: {log}")

    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/serve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "artifact": str(args.artifact),
        "model": scorer.model.name,
        "model_version": scorer.model_version,
        "products": scorer.num_products,
        "users": len(scorer.user_ids),
        "k": args.k,
        "threads": args.threads,
        "max_wait_ms": args.max_wait_ms,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "in_process": baseline,
        "http": http,
        "reload": reload,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    table = markdown(payload)
    print(table)
    print(f"ratio = ms/row over HTTP (wall / rows answered) / in-process ms/row at batch {args.batch}; results: {args.out}")
    return payload


if __name__ == "__main__":
    main()
