"""The node's web app: wiring of resources (cleanup contexts) and routes."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator

from aiohttp import web

from aisdl.api import auth, buckets, cluster, download, keys, metrics, objects, ui
from aisdl.api.browser import guard_browsers
from aisdl.api.middleware import MAX_REQUEST_BODY, ais_errors, only_what_is_carried_out
from aisdl.api.tls_redirect import redirect_object_puts
from aisdl.config import NodeConfig
from aisdl.db import Database
from aisdl.jobs.manager import JobManager
from aisdl.store.store import Store


def create_app(config: NodeConfig) -> web.Application:
    # Over HTTPS, object PUTs are redirected before anything else looks at them; tokens are
    # checked before the route check reads a body or names what is not supported.
    first = [redirect_object_puts] if config.tls else []
    token_check = ([auth.checking(auth.Verifier(config.auth_algorithm, config.auth_key))]
                   if config.auth_algorithm else [])
    app = web.Application(middlewares=[*first, ais_errors, guard_browsers(config), *token_check,
                                       only_what_is_carried_out],
                          client_max_size=MAX_REQUEST_BODY)
    app[keys.CONFIG] = config
    app[keys.NODE_ID] = _node_id(config)
    app.cleanup_ctx.append(_resources)
    for module in (cluster, buckets, objects, download, metrics, ui):
        module.setup(app)
    return app


def _node_id(config: NodeConfig) -> str:
    """A stable id per home directory, AIS style (letters and digits)."""
    config.home.mkdir(parents=True, exist_ok=True)
    path = config.home / "node_id"
    if not path.exists():  # the owner's only, as everything in the home
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(4))
    return path.read_text().strip()


async def _resources(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    db = Database(config.db_path)
    store = Store(db, list(config.data_dirs), app[keys.NODE_ID])
    jobs = JobManager(config, db, store)
    app[keys.DB], app[keys.STORE], app[keys.JOBS] = db, store, jobs
    await jobs.start()  # cleans leftover work files; jobs resume once the node serves
    try:
        yield
    finally:
        await jobs.close()
        await asyncio.get_running_loop().run_in_executor(None, db.close)
