"""Typed keys for what the web app holds: one value per resource, no globals."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    pass

CONFIG = web.AppKey("config", "NodeConfig")
DB = web.AppKey("db", "Database")
STORE = web.AppKey("store", "Store")
JOBS = web.AppKey("jobs", "JobManager")
NODE_ID = web.AppKey("node_id", str)
