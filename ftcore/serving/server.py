"""Starting the endpoint: `serve` blocks (the `ftflow serve` command); `serving` runs it on a background thread for
as long as a `with` block lasts (the pipeline's monitor stage, tests, the load benchmark)."""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ftcore.errors import UserError
from ftcore.serving.config import ADMIN_TOKEN_ENV, TOKEN_ENV, ServeConfig
from ftcore.serving.protocol import serving_protocol
from ftcore.serving.source import ModelSource, model_source

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


def bind(host: str, port: int) -> socket.socket:
    """The address to listen on, taken before the model loads: a bad port, a port in use or an address this machine
    does not have is a one-line error at once, not after the model has loaded. Port 0: a free one."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: give a port from 1 to 65535 (0: any free port)")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); choose a free port "
                        "or an address of this machine") from None
    return sock


def _server(app, sock: socket.socket, cfg: ServeConfig, log_level: str):
    import uvicorn

    host, port = sock.getsockname()[:2]
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                                         http=serving_protocol(cfg.limits.header_timeout_s)))


def admin_token_of(given: str | None) -> str | None:
    """The admin routes' token: the one given, else $FTFLOW_ADMIN_TOKEN; none turns the routes off."""
    return given or os.environ.get(ADMIN_TOKEN_ENV) or None


def build_app(source: ModelSource, cfg: ServeConfig, token: str | None, admin_token: str | None = None):
    """The app for the source with its first version loaded and its adapters attached (a missing version, one whose
    files are missing or damaged, or an adapter of another base fails here)."""
    from ftcore.serving.app import create_app

    version = source.current_version()
    started = time.perf_counter()
    engine = source.load(version)
    log.info("loaded %s version %s (%s) in %.1f s", engine.name, version, engine.kind, time.perf_counter() - started)
    return create_app(source, engine, cfg, token, admin_token)


def serve(target: str, cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          admin_token: str | None = None) -> None:
    source = model_source(target, cfg.variant, cfg.device, cfg.dtype)
    sock = bind(host, port)
    token, generated = bearer_token(host, token)
    app = build_app(source, cfg, token, admin_token_of(admin_token))
    if generated:
        print(f"Serving beyond loopback: auth is on. Send 'Authorization: Bearer {token}' "
              f"(set {TOKEN_ENV} or pass --token to choose it).", flush=True)
    server = _server(app, sock, cfg, "info")
    bound_host, bound_port = sock.getsockname()[:2]
    log.info("serving %s on http://%s:%d", target, f"[{bound_host}]" if ":" in bound_host else bound_host, bound_port)
    server.run(sockets=[sock])
    if not server.started:  # uvicorn logged why (the app's start-up failed)
        raise RuntimeError(f"the endpoint for {target} did not start")


@contextmanager
def serving(target: str, cfg: ServeConfig, host: str = "127.0.0.1", port: int = 0,
            token: str | None = None, admin_token: str | None = None) -> Iterator[str]:
    """The endpoint for `target` on a background thread; yields its base URL (port 0: a free port)."""
    source = model_source(target, cfg.variant, cfg.device, cfg.dtype)
    sock = bind(host, port)
    try:
        app = build_app(source, cfg, bearer_token(host, token)[0], admin_token_of(admin_token))
    except BaseException:
        sock.close()
        raise
    server = _server(app, sock, cfg, "warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="ftflow-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise UserError(f"the endpoint for {target} did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
