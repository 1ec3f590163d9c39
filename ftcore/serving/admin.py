"""The admin routes: the adapters attached at run time (docs/serving.md, "Many adapters on one base"). The admin
token guards them (middleware.Authenticate)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI

from ftcore.serving.adapters import AdapterSet
from ftcore.serving.errors import ApiError
from ftcore.serving.schemas import ERRORS, AdapterLoad, ModelEntry, ModelList

if TYPE_CHECKING:
    from ftcore.serving.app import ServerState

log = logging.getLogger("ftflow.serve")


def add_admin_routes(app: FastAPI, state: ServerState) -> None:
    """The adapters attached at run time: list, load (or replace), unload. The admin token guards them
    (middleware.Authenticate)."""

    def adapters() -> AdapterSet:
        if state.adapters is None:
            raise ApiError(400, f"{state.engine.name} v{state.engine.version} cannot take adapters: they need a causal "
                                "text model served as registered (variant model) with continuous batching",
                           code="adapters_unavailable")
        return state.adapters

    @app.get("/admin/adapters", response_model=ModelList, responses=ERRORS)
    async def list_adapters() -> dict:
        return {"object": "list", "data": [{"object": "model", "owned_by": "ftflow", **m}
                                           for m in adapters().listing()]}

    @app.post("/admin/adapters", response_model=ModelEntry, responses=ERRORS)
    async def load_adapter(body: AdapterLoad) -> dict:
        loaded = await adapters().add(body.name, body.uri)
        log.info("adapter %s loaded: %s version %s", loaded.name, loaded.uri, loaded.version)
        return {"object": "model", "owned_by": "ftflow", **state.adapters.entry(loaded.name)}  # type: ignore[union-attr]

    @app.delete("/admin/adapters/{name:path}", responses=ERRORS)  # MODEL/VERSION of --all-versions
    async def unload_adapter(name: str) -> dict:
        await adapters().remove(name)
        log.info("adapter %s unloaded", name)
        return {"id": name, "object": "model", "deleted": True}
