"""Typed keys for what the web app holds: one value per resource, no globals."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from aisdl.config import NodeConfig
    from aisdl.db import Database
    from aisdl.jobs.manager import JobManager
    from aisdl.store.store import Store

CONFIG: web.AppKey[NodeConfig] = web.AppKey("config")
DB: web.AppKey[Database] = web.AppKey("db")
STORE: web.AppKey[Store] = web.AppKey("store")
JOBS: web.AppKey[JobManager] = web.AppKey("jobs")
NODE_ID = web.AppKey("node_id", str)
