"""The dashboard: a page the node serves at `/ui` (and `/` sends there), plain HTML, CSS and
JavaScript shipped in this package (`static/`), with no build step and nothing from elsewhere.

The page drives the node through its REST API (`/v1/download`: list, start, abort, remove). A
browser cannot send a body with a GET, and AIS's one-job status takes the job's id in its body,
so the page reads one job through `GET /ui/api/jobs/{id}` instead: the job's status without its
error list, plus what is new since the page's last look (errors and finished tasks after the
cursors it sends). A job with 10,000 errors then costs one index range read per poll, not the
whole list every second.

The page's files are open (a page with no data in it; it asks for a token when the node wants
one); `/ui/api/...` needs the tokens the API needs (api/auth.py), sent by the page as
`Authorization: Bearer`. Every answer here carries a strict Content-Security-Policy: the page
runs only its own script and talks only to its own origin.
"""

from __future__ import annotations

import sqlite3
from importlib import resources
from typing import Any

from aiohttp import web

from aisdl.api.keys import DB, JOBS
from aisdl.errors import BadRequest
from aisdl.redact import redact_text

# What the page may load and where it may connect: itself, and nothing inline.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self';"
                               " img-src 'self' data:; connect-src 'self'; object-src 'none';"
                               " base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
FILES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
# The most errors one poll returns: the page catches up over a few polls (10,000 in one).
ERRORS_PER_POLL = 10_000
CURSORS = ("errors_after", "tasks_after")


def setup(app: web.Application) -> None:
    app.router.add_route("GET", "/", to_dashboard)
    app.router.add_route("GET", "/ui", page)
    app.router.add_route("GET", "/ui/{file}", static_file)
    app.router.add_route("GET", "/ui/api/jobs/{id}", job_view)


async def to_dashboard(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui")


async def page(request: web.Request) -> web.Response:
    return _file("index.html")


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["file"]
    if name not in FILES or name == "index.html":
        raise web.HTTPNotFound()
    return _file(name)


def _file(name: str) -> web.Response:
    body = resources.files(__package__).joinpath("static", name).read_bytes()
    return web.Response(body=body, content_type=FILES[name], charset="utf-8",
                        headers=SECURITY_HEADERS)


async def job_view(request: web.Request) -> web.Response:
    """One job as the page shows it: its status with the transfers in flight, the errors after
    `errors_after` and the finished tasks after `tasks_after` (row numbers the previous answer
    gave; 0 at first)."""
    job_id = request.match_info["id"]
    errors_after, tasks_after = (_cursor(request, name) for name in CURSORS)
    status = await request.app[JOBS].status(job_id, only_active=True)  # 404 for an unknown id
    news = await request.app[DB].run(lambda c: _news(c, job_id, errors_after, tasks_after))
    # Every byte the job recorded (the metrics' count): the page's bytes/s; the finished tasks
    # alone miss what goes beyond the 1,000 a job keeps, above 1,000 files/s
    recorded = request.app[JOBS].ledger.job_bytes(job_id)
    return web.json_response({"job": status, **news, "recorded_bytes": recorded},
                             headers=SECURITY_HEADERS)


def _cursor(request: web.Request, name: str) -> int:
    text = request.query.get(name, "0")
    if not text.isdigit() or len(text) > 18:
        raise BadRequest(f"{name} must be a row number (0 or more), not {text[:40]!r}")
    return int(text)


def _news(conn: sqlite3.Connection, job_id: str, errors_after: int,
          tasks_after: int) -> dict[str, Any]:
    """The errors and finished tasks recorded after the cursors, in the order they were
    recorded (rows are only ever added to a job, so a row number only grows). Finished tasks
    are summed, for the page's throughput: a job keeps its last 1,000 of them."""
    errors = conn.execute(
        "SELECT rowid, name, error FROM job_errors WHERE job_id = ? AND rowid > ?"
        " ORDER BY rowid LIMIT ?", (job_id, errors_after, ERRORS_PER_POLL)).fetchall()
    files, size, last = conn.execute(
        "SELECT count(*), coalesce(sum(downloaded), 0), coalesce(max(rowid), ?) FROM job_tasks"
        " WHERE job_id = ? AND rowid > ?", (tasks_after, job_id, tasks_after)).fetchone()
    return {
        "errors": [[name, redact_text(error)] for _, name, error in errors],
        "errors_after": errors[-1][0] if errors else errors_after,
        "finished": {"files": files, "bytes": size, "tasks_after": last},
    }
