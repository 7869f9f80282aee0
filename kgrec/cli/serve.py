"""``kgrec serve``: the scoring API over HTTP with its page (flags -> :class:`kgrec.serving.http.ServeConfig`)."""
from __future__ import annotations

from pathlib import Path

import typer

from kgrec.cli.app import command, quiet_transformers


@command("serve")
def serve(
    artifact: Path = typer.Option(..., "--artifact", "-a", help="Artifact folder (from `kgrec train`)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (default: loopback only)."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to bind."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    text_model: Path | None = typer.Option(None, help="Text encoder folder, if it moved since the artifact was saved."),
    max_wait_ms: float = typer.Option(2.0, min=0.0, help="How long a batch waits for more requests after its first."),
    max_batch: int = typer.Option(256, min=1, help="Rows (users, queries, products) that close a batch early."),
    max_body_bytes: int = typer.Option(2**20, min=1, help="Larger request bodies answer 413."),
    api_key_env: str = typer.Option("KGREC_API_KEY", help="Environment variable holding the API key (unset: no key)."),
    watch: float = typer.Option(0.0, min=0.0, metavar="SECONDS",
                                help="Reload when the artifact's config.json changes (poll interval; 0 = off)."),
    reload: bool = typer.Option(True, "--reload/--no-reload", help="Serve POST /admin/reload."),
    threads: int | None = typer.Option(None, min=1, help="Torch threads of the scoring thread."),
    access_log: bool = typer.Option(False, "--access-log", help="uvicorn's access log."),
    log_level: str = typer.Option("info", help="uvicorn's log level."),
) -> None:
    """Serve an artifact over HTTP: /v1 recommend, search, similar, score, explain; /healthz, /readyz, /metrics; a page at /."""
    from kgrec.serving.http import serve as run

    quiet_transformers()
    run(artifact, host, port, device=device, text_model=str(text_model) if text_model else None, max_wait_ms=max_wait_ms,
        max_batch_rows=max_batch, max_body_bytes=max_body_bytes, api_key_env=api_key_env, watch_seconds=watch,
        allow_reload=reload, threads=threads, access_log=access_log, log_level=log_level)
