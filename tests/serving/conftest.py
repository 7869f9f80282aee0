"""Fixtures of the HTTP tests: tiny artifacts and a real server process (uvicorn on a free loopback port)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from kgrec.fusion.models import FusedConfig
from kgrec.fusion.registry import ModelInputs, build_model
from kgrec.fusion.train import TrainConfig, fit
from kgrec.serving.artifact import save_artifact

API_KEY = "test-key-7f3a"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A running ``python -m kgrec.serving.http`` process."""

    url: str
    process: subprocess.Popen
    log: Path
    headers: dict[str, str] = field(default_factory=dict)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=30, **kwargs)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(artifact: Path, log: Path, api_key: str | None = None, *extra: str) -> Server:
    """Start the service on ``artifact`` and wait until ``/readyz`` answers 200 (at most 120 s)."""
    env = {k: v for k, v in os.environ.items() if k != "KGREC_API_KEY"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    if api_key is not None:
        env["KGREC_API_KEY"] = api_key
    for attempt in range(3):
        port = free_port()
        handle = log.open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "kgrec.serving.http", "--artifact", str(artifact), "--port", str(port),
             "--log-level", "warning", *extra],
            stdout=handle, stderr=subprocess.STDOUT, env=env,
        )
        handle.close()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return Server(url, process, log, {"X-API-Key": api_key} if api_key else {})
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        stop_server(process)
        if "address already in use" not in log.read_text(errors="replace").lower() or attempt == 2:
            raise RuntimeError(f"the server did not get ready:\n{log.read_text(errors='replace')[-4000:]}")
    raise AssertionError("unreachable")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="session")
def http_encoder(tiny_bert_dir):
    from kgrec.encoders.text import TextEncoder, TextEncoderConfig

    return TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir))


@pytest.fixture(scope="session")
def http_artifacts(tiny_snapshot, tiny_store, http_encoder, tmp_path_factory) -> dict[str, Path]:
    """Two fused artifacts of the tiny catalogue that rank differently: ``a`` and ``b``."""
    import torch

    directory = tmp_path_factory.mktemp("http-artifacts")
    text = http_encoder.encode(tiny_snapshot.product_text)
    out = {}
    for name, seed, epochs in (("a", 0, 2), ("b", 1, 4)):
        torch.manual_seed(seed)
        model = build_model("fused", ModelInputs.from_snapshot(tiny_snapshot, text), FusedConfig(graph_dim=8))
        fit(model, tiny_snapshot, TrainConfig(epochs=epochs, batch_size=32, lr=1e-2, device="cpu", seed=seed), progress=False)
        out[name] = save_artifact(model, tiny_snapshot, directory / name, text_encoder=http_encoder,
                                  products=tiny_store.nodes("Product"), serving={"lexical_weight": 0.25})
    return out


@contextlib.contextmanager
def running_server(artifact: Path, log: Path, api_key: str | None = None, *extra: str) -> Iterator[Server]:
    """:func:`start_server`, stopped on exit; its log must hold no traceback (no request failed inside)."""
    running = start_server(artifact, log, api_key, *extra)
    try:
        yield running
    finally:
        stop_server(running.process)
    assert "Traceback" not in running.output(), running.output()[-4000:]


@pytest.fixture(scope="session")
def server_process():
    """``server_process(artifact, log, api_key, *flags)``: a context manager running the service."""
    return running_server


@pytest.fixture(scope="session")
def server(http_artifacts, tmp_path_factory) -> Iterator[Server]:
    """The service on artifact ``a`` with an API key (from the environment, as in production)."""
    with running_server(http_artifacts["a"], tmp_path_factory.mktemp("server") / "server.log", API_KEY) as running:
        yield running
