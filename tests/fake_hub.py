"""A fake Hugging Face Hub for tests and benchmarks (real aiohttp servers on 127.0.0.1).

Two origins, as on the real Hub: the Hub itself (API and `resolve` URLs) and a separate file
store on another port, where the Hub redirects LFS files (the real Hub's CDN).

    hub = FakeHub(page_size=3).start()
    hub.add_repo("org/model", {"config.json": b"{}", "model.bin": big}, lfs={"model.bin"})
    hub.add_repo("org/private", files, private=True, tokens={"hf_good"})
    hub.add_repo("org/gated", files, gated=True, tokens={"hf_good"})
    hub.commit("org/model", {"config.json": b"{...}"})   # a new commit on main
    hub.url   # HF_ENDPOINT;  hub.requests("store") for what the file store was sent
    hub.stop()

The Hub answers what huggingface_hub asks of it:
- `GET /api/{models,datasets}/REPO/revision/REV` -> {"id", "sha", "siblings", "private",
  "gated"}; `GET /api/.../tree/REV[/PATH]?recursive=true` -> entries (`type`, `oid`, `size`,
  `path`, `lfs` {oid, size, pointerSize}), `page_size` a page, the next page in a `Link:
  <...>; rel="next"` header (cursor based, as the Hub's).
- `GET|HEAD /[datasets/]REPO/resolve/REV/PATH`: a small file is served here (`ETag` its git
  blob id, `X-Repo-Commit`); an LFS file is a 302 to the file store with `X-Linked-Etag` (its
  sha256), `X-Linked-Size`, `X-Repo-Commit`, `ETag` and `Location`.
- Errors with the Hub's `X-Error-Code`: RepoNotFound (401 without a token, 404 with one; also a
  private repository the token may not read), RevisionNotFound, EntryNotFound, GatedRepo (401
  without a token, 403 with one not allowed; gated repositories' API answers, their files do
  not), and 401 "Invalid credentials in Authorization header" for a token it does not know.
The file store answers GET and HEAD with `Content-Length`, an `ETag` of its own (not the
sha256, as a CDN's), `Accept-Ranges` and single ranges (206); `rate` caps each response's
bytes per second (a CDN's per-connection cap). Every request of both is logged with its
headers. File contents may be virtual (`Virtual(size, seed)`): made on the fly, never held.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode

from aiohttp import web

BLOCK = 1 << 20  # a virtual file repeats one block of this many random bytes


@dataclass(frozen=True)
class Virtual:
    """`size` bytes made from `seed` on the fly (a repeated 1 MiB block)."""

    size: int
    seed: str

    def block(self) -> bytes:
        return _block(self.seed)

    def read(self, start: int, end: int) -> bytes:
        """Bytes [start, end)."""
        block = self.block()
        out = bytearray()
        pos = start
        while pos < end:
            off = pos % BLOCK
            piece = block[off:off + min(BLOCK - off, end - pos)]
            out += piece
            pos += len(piece)
        return bytes(out)


Content = bytes | Virtual


@functools.lru_cache(maxsize=8)
def _block(seed: str) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < BLOCK:
        out += hashlib.sha512(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:BLOCK])


@dataclass
class _File:
    content: Content
    lfs: bool
    sha256: str = ""
    oid: str = ""  # git blob id

    def __post_init__(self) -> None:
        size = self.size
        h, g = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
        if isinstance(self.content, bytes):
            h.update(self.content)
            g.update(self.content)
        else:
            block = self.content.block()
            for _ in range(size // BLOCK):
                h.update(block)
            h.update(block[:size % BLOCK])
            g.update(self.content.seed.encode())  # a stand-in: never served for LFS files
        self.sha256 = h.hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n" \
                  f"size {size}\n".encode()
        self.oid = hashlib.sha1(f"blob {len(pointer)}\0".encode() + pointer).hexdigest() \
            if self.lfs else g.hexdigest()

    @property
    def size(self) -> int:
        return len(self.content) if isinstance(self.content, bytes) else self.content.size

    def read(self, start: int, end: int) -> bytes:
        if isinstance(self.content, bytes):
            return self.content[start:end]
        return self.content.read(start, end)


@dataclass
class _Repo:
    repo_type: str
    private: bool
    gated: bool
    tokens: set[str]
    commits: dict[str, dict[str, _File]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    site: str        # hub | store
    method: str
    path: str
    headers: dict[str, str]


_API = re.compile(r"^/api/(models|datasets)/(.+?)/(revision|tree)/([^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/(datasets/)?(.+?)/resolve/([^/]+)/(.+)$")


class FakeHub:
    def __init__(self, page_size: int = 1000, rate: int = 0) -> None:
        self.page_size = page_size
        self.rate = rate  # bytes/s per file-store response (0: no cap)
        self.store_url = ""  # another file store (nginx) for LFS files: /blobs/SHA256 there
        self.known_tokens: set[str] = set()
        self.corrupt: set[str] = set()  # sha256 of LFS files the store serves one byte off
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._blobs: dict[str, _File] = {}
        self._log: list[Request] = []
        self._lock = threading.Lock()
        self._commits = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []
        self.port = self.store_port = 0

    # -- set-up ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store(self) -> str:
        return self.store_url or f"http://127.0.0.1:{self.store_port}"

    def add_repo(self, repo: str, files: dict[str, Content], *, repo_type: str = "model",
                 lfs: set[str] | None = None, private: bool = False, gated: bool = False,
                 tokens: set[str] | None = None, tag: str = "") -> str:
        """A repository with one commit on `main` (and `tag`); returns the commit."""
        self._repos[(repo_type, repo)] = _Repo(repo_type, private, gated, set(tokens or ()))
        self.known_tokens |= set(tokens or ())
        sha = self.commit(repo, files, repo_type=repo_type, lfs=lfs, replace=True)
        if tag:
            self._repos[(repo_type, repo)].refs[tag] = sha
        return sha

    def commit(self, repo: str, files: dict[str, Content], *, repo_type: str = "model",
               lfs: set[str] | None = None, replace: bool = False) -> str:
        """A new commit on `main`: `files` change (or are added) in the last commit's tree."""
        r = self._repos[(repo_type, repo)]
        tree = {} if replace or "main" not in r.refs else dict(r.commits[r.refs["main"]])
        for path, content in files.items():
            f = _File(content, path in (lfs or ()))
            tree[path] = f
            if f.lfs:
                self._blobs[f.sha256] = f
        self._commits += 1
        sha = hashlib.sha1(f"{repo}:{self._commits}".encode()).hexdigest()
        r.commits[sha] = tree
        r.refs["main"] = sha
        return sha

    def content(self, repo: str, path: str, repo_type: str = "model") -> bytes:
        r = self._repos[(repo_type, repo)]
        f = r.commits[r.refs["main"]][path]
        return f.read(0, f.size)

    def blob_of(self, repo: str, path: str, repo_type: str = "model") -> str:
        """The sha256 of a file on `main` (an LFS file's name in the file store)."""
        r = self._repos[(repo_type, repo)]
        return r.commits[r.refs["main"]][path].sha256

    def requests(self, site: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self._log if site is None or r.site == site]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeHub:
        socks = []
        for _ in range(2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        self.port, self.store_port = (s.getsockname()[1] for s in socks)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-hub",
                                        daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._astart(*socks), self._loop).result(10)
        return self

    async def _astart(self, hub_sock: socket.socket, store_sock: socket.socket) -> None:
        for handler, sock in ((self._hub, hub_sock), (self._store, store_sock)):
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handler)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            self._runners.append(runner)

    def stop(self) -> None:
        if self._loop is None:
            return
        for runner in self._runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the Hub -----------------------------------------------------------------------------
    def _record(self, site: str, request: web.Request) -> None:
        with self._lock:
            self._log.append(Request(site, request.method, request.raw_path,
                                     dict(request.headers)))

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        return web.json_response({"error": message}, status=status, headers=headers)

    def _repo(self, request: web.Request, repo_type: str,
              repo_id: str) -> tuple[_Repo | None, web.Response | None]:
        """The repository the request may see, or the Hub's error."""
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth else ""
        if token and token not in self.known_tokens:
            return None, self._error(401, "", "Invalid credentials in Authorization header")
        r = self._repos.get((repo_type, repo_id))
        if r is None or (r.private and token not in r.tokens):
            return None, self._error(401 if not token else 404, "RepoNotFound",
                                     "Repository not found")
        return r, None

    def _commit_of(self, r: _Repo, rev: str) -> str | None:
        rev = unquote(rev)
        if rev in r.commits:
            return rev
        return r.refs.get(rev)

    async def _hub(self, request: web.Request) -> web.StreamResponse:
        self._record("hub", request)
        path = request.raw_path.split("?", 1)[0]
        if m := _API.match(path):
            kind, repo_id, op, rev, rest = m.groups()
            r, error = self._repo(request, kind[:-1], repo_id)
            if error is not None:
                return error
            assert r is not None
            sha = self._commit_of(r, rev)
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(rev)}")
            if op == "revision":
                return web.json_response({
                    "id": repo_id, "sha": sha, "private": r.private,
                    "gated": "manual" if r.gated else False,
                    "siblings": [{"rfilename": p} for p in sorted(r.commits[sha])]})
            return self._tree(request, r, sha, unquote(rest or ""))
        if m := _RESOLVE.match(path):
            datasets, repo_id, rev, file = m.groups()
            return await self._resolve(request, "dataset" if datasets else "model", repo_id,
                                       rev, unquote(file))
        return self._error(404, "", "Not found")

    def _tree(self, request: web.Request, r: _Repo, sha: str, folder: str) -> web.Response:
        recursive = request.query.get("recursive", "").lower() in ("true", "1")
        files = r.commits[sha]
        prefix = f"{folder.strip('/')}/" if folder else ""
        if folder and not any(p.startswith(prefix) for p in files):
            return self._error(404, "EntryNotFound", f"{folder} does not exist on {sha}")
        entries: dict[str, dict[str, Any]] = {}
        for p in sorted(files):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):].split("/")
            dirs = rest[:-1] if recursive else rest[:1] if len(rest) > 1 else []
            for i in range(len(dirs)):
                d = prefix + "/".join(rest[:i + 1])
                entries.setdefault(d, {"type": "directory", "oid": hashlib.sha1(
                    d.encode()).hexdigest(), "size": 0, "path": d})
            if recursive or len(rest) == 1:
                f = files[p]
                e: dict[str, Any] = {"type": "file", "oid": f.oid, "size": f.size, "path": p}
                if f.lfs:
                    e["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                entries[p] = e
        listing = sorted(entries.values(), key=lambda e: e["path"])
        cursor = int(request.query.get("cursor", "0"))
        page = listing[cursor:cursor + self.page_size]
        headers = {}
        if cursor + self.page_size < len(listing):
            query = {k: v for k, v in request.query.items() if k != "cursor"}
            query["cursor"] = str(cursor + self.page_size)
            headers["Link"] = f'<{self.url}{request.path}?{urlencode(query)}>; rel="next"'
        return web.json_response(page, headers=headers)

    async def _resolve(self, request: web.Request, repo_type: str, repo_id: str, rev: str,
                       file: str) -> web.StreamResponse:
        r, error = self._repo(request, repo_type, repo_id)
        if error is not None:
            return error
        assert r is not None
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if r.gated and token not in r.tokens:
            return self._error(401 if not token else 403, "GatedRepo",
                               "Access to this repository is restricted")
        sha = self._commit_of(r, rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(rev)}")
        f = r.commits[sha].get(file)
        if f is None:
            return self._error(404, "EntryNotFound", f"{file} does not exist on {sha}")
        common = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if f.lfs:
            location = f"{self.store}/blobs/{f.sha256}?" + urlencode(
                {"expires": "2000000000", "signature": hashlib.sha1(
                    f.sha256.encode()).hexdigest()[:16]})
            return web.Response(status=302, headers={
                **common, "Location": location, "ETag": f'"{f.sha256}"',
                "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size),
                "Content-Length": "0"})
        return await self._stream(request, f, {**common, "ETag": f'"{f.oid}"'}, 0)

    # -- the file store ----------------------------------------------------------------------
    async def _store(self, request: web.Request) -> web.StreamResponse:
        self._record("store", request)
        m = re.match(r"^/blobs/([0-9a-f]{64})$", request.path)
        f = self._blobs.get(m.group(1)) if m else None
        if f is None:
            return web.Response(status=404, text="NoSuchKey")
        cdn_etag = hashlib.md5(f.sha256.encode()).hexdigest()  # a CDN's own: not the sha256
        return await self._stream(request, f, {"ETag": f'"{cdn_etag}"',
                                               "Accept-Ranges": "bytes"}, self.rate)

    @staticmethod
    def _range(request: web.Request, f: _File) -> tuple[int, int, int]:
        value = request.headers.get("Range", "")
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", value.strip())
        if not m or (not m.group(1) and not m.group(2)):
            return 0, f.size, 200
        if m.group(1):
            start = int(m.group(1))
            end = min(f.size, int(m.group(2)) + 1) if m.group(2) else f.size
        else:
            start, end = max(0, f.size - int(m.group(2))), f.size
        if start >= f.size or start >= end:
            return 0, 0, 416
        return start, end, 206

    async def _stream(self, request: web.Request, f: _File, headers: dict[str, str],
                      rate: int) -> web.StreamResponse:
        start, end, status = self._range(request, f)
        if status == 416:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{f.size}"})
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = end - start
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        piece = 256 << 10
        began, sent = time.monotonic(), 0
        pos = start
        while pos < end:
            data = f.read(pos, min(end, pos + piece))
            if f.sha256 in self.corrupt and pos == 0:
                data = bytes([data[0] ^ 1]) + data[1:]
            await resp.write(data)
            pos += len(data)
            sent += len(data)
            if rate:  # paced: never ahead of `rate` bytes/s since the first byte
                ahead = sent / rate - (time.monotonic() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await resp.write_eof()
        return resp

