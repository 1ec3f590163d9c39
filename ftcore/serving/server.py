"""Starting the endpoint: `serve` blocks (the `ftflow serve` command); `serving` runs it on a background thread for
as long as a `with` block lasts (the pipeline's monitor stage, tests, the load benchmark)."""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ftcore.errors import UserError
from ftcore.serve_config import TOKEN_ENV, ServeConfig
from ftcore.serving.source import model_source

log = logging.getLogger("ftflow.serve")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bearer_token(host: str, token: str | None) -> tuple[str | None, bool]:
    """The token requests must carry: the one given, else $FTFLOW_SERVE_TOKEN, else none on loopback and a new
    random one beyond it (auth is on by default there). Second: whether it was generated (to be shown once)."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host):
        return secrets.token_urlsafe(24), True
    return token, False


def build_app(target: str, cfg: ServeConfig, token: str | None):
    """The app for MODEL_URI with its first version loaded (a bad URI or a missing version fails here, before the
    port is bound)."""
    from ftcore.serving.app import create_app

    source = model_source(target, cfg.variant, cfg.device)
    version = source.current_version()
    started = time.perf_counter()
    engine = source.load(version)
    log.info("loaded %s version %s (%s) in %.1f s", engine.name, version, engine.kind, time.perf_counter() - started)
    return create_app(source, engine, cfg, token)


def serve(target: str, cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000, token: str | None = None) -> None:
    import uvicorn

    token, generated = bearer_token(host, token)
    app = build_app(target, cfg, token)
    if generated:
        print(f"Serving beyond loopback: auth is on. Send 'Authorization: Bearer {token}' "
              f"(set {TOKEN_ENV} or pass --token to choose it).", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


@contextmanager
def serving(target: str, cfg: ServeConfig, host: str = "127.0.0.1", port: int = 0,
            token: str | None = None) -> Iterator[str]:
    """The endpoint for `target` on a background thread; yields its base URL (port 0: a free port)."""
    import uvicorn

    app = build_app(target, cfg, bearer_token(host, token)[0])
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="ftflow-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise UserError(f"the endpoint for {target} did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
