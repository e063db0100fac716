"""The Hugging Face Hub as a source: a model or dataset repository at one commit.

A job names a repository and a revision (branch, tag or commit). At job start the node asks
the Hub once what that revision is (its commit) and whether it may read the repository, so a
missing or gated repository, a bad revision or a refused token is one clear error of the
start request, not one error per file. The job then lists the repository at that commit (the
Hub's tree API, paginated by its `Link` header) and fetches each file through its `resolve`
URL at the commit; the Hub redirects large (LFS) files to its file store. What the listing
says of a file is what its bytes must be: an LFS file's sha256, else its size and git blob id.

The token goes to the Hub's own origin only: libcurl sends a custom `Authorization` header to
the host (and port) it was given, never to the one it is redirected to, and the aiohttp path
drops it on a redirect to another origin (`sources.http`). It is never stored with the job: a
job resumed after a restart uses the node's own token (HF_TOKEN, HF_TOKEN_PATH, HF_HOME).

This module loads no HTTP client at import: the CLI reads tokens with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin

from aisdl.errors import AisdlError, BadRequest, SourceError
from aisdl.sources.base import SourceObject
from aisdl.sources.http import origin_of

if TYPE_CHECKING:
    import aiohttp

HF_SOURCE = "hf"
DEFAULT_ENDPOINT = "https://huggingface.co"
REPO_TYPES = ("model", "dataset")
DEFAULT_REVISION = "main"
API_TIMEOUT = 30.0       # seconds for one answer of the Hub's API
API_REDIRECTS = 5        # a renamed repository answers with a redirect to its new name
MAX_PAGES = 100_000      # pages of one listing (1,000 entries each): a Hub that never ends
# huggingface_hub's rule for a repository id: `name` or `namespace/name`, at most 96 characters
_REPO_ID = re.compile(r"^(\b[\w\-.]+\b/)?\b[\w\-.]+\b$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LINK_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


Page = tuple[list[dict[str, Any]], bool]  # a page of tree entries, and whether it is the last


class HubError(AisdlError):
    """What the Hub said no to at job start, with the status the node answers."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class HfRepo:
    """A repository at a revision, and where its files go in the bucket."""

    repo_type: str          # model | dataset
    repo: str               # `name` or `namespace/name`
    revision: str = DEFAULT_REVISION  # as asked: a branch, a tag or a commit
    file: str = ""          # one file of the repository ("": all of them)
    subdir: str = ""        # the objects' prefix in the bucket
    commit: str = ""        # the revision's commit, resolved at job start: every file is from it
    endpoint: str = ""      # the Hub, as HF_ENDPOINT said at job start
    files: int = -1         # how many files the job has, when known at its start

    @property
    def what(self) -> str:
        return f"{self.repo_type} {self.repo!r}"

    @property
    def api(self) -> str:
        return f"{self.endpoint}/api/{self.repo_type}s/{self.repo}"

    def resolve_url(self, path: str) -> str:
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        return f"{self.endpoint}/{prefix}{self.repo}/resolve/{self.commit}/{quote(path)}"

    def object_name(self, path: str) -> str:
        folder = self.subdir.strip("/")
        return f"{folder}/{path}" if folder else path

    def to_json(self) -> dict[str, Any]:
        return {"repo_type": self.repo_type, "repo": self.repo, "revision": self.revision,
                "file": self.file, "subdir": self.subdir, "commit": self.commit,
                "endpoint": self.endpoint, "files": self.files}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HfRepo:
        return cls(**d)


def check_repo(repo_type: str, repo: str, revision: str, file: str) -> None:
    """The request's names, checked before anything is asked of the Hub."""
    if repo_type not in REPO_TYPES:
        raise BadRequest(f"invalid Hugging Face repository type {repo_type!r} (model, dataset)")
    if len(repo) > 96 or not _REPO_ID.match(repo) or "--" in repo or ".." in repo:
        raise BadRequest(f"invalid Hugging Face repository id {repo[:200]!r}: expected `name`"
                         " or `namespace/name` of letters, digits, '-', '_' and '.'")
    if not revision or len(revision) > 256 or _CONTROL.search(revision):
        raise BadRequest(f"invalid Hugging Face revision {revision[:200]!r}")
    if file and (len(file) > 4096 or _CONTROL.search(file) or file.startswith("/")
                 or ".." in file.split("/") or posixpath.normpath(file) != file):
        raise BadRequest(f"invalid file name {file[:200]!r}: a path inside the repository,"
                         " such as config.json or onnx/model.onnx")


# -- token and endpoint, read as huggingface_hub reads them ---------------------------------
def hub_endpoint(env: Mapping[str, str] = os.environ) -> str:
    return (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_token(env: Mapping[str, str] = os.environ) -> str:
    """HF_TOKEN (or the older HUGGING_FACE_HUB_TOKEN), else the token file: HF_TOKEN_PATH, by
    default `token` in HF_HOME (~/.cache/huggingface, or under XDG_CACHE_HOME). "": none."""
    token = (env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or "").strip()
    if token:
        return token
    cache = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = os.path.expandvars(os.path.expanduser(env.get("HF_HOME")
                                                 or os.path.join(cache, "huggingface")))
    path = os.path.expandvars(os.path.expanduser(env.get("HF_TOKEN_PATH")
                                                 or os.path.join(home, "token")))
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def auth_headers(token: str) -> dict[str, list[str]]:
    return {"Authorization": [f"Bearer {token}"]} if token else {}


# -- the Hub's API ---------------------------------------------------------------------------
class Hub:
    """Calls of the Hub's API for one repository, on the given aiohttp session. The token is
    sent to the Hub's origin only: a redirect or a next page elsewhere is refused."""

    def __init__(self, session: aiohttp.ClientSession, repo: HfRepo, token: str,
                 allow_private: bool) -> None:
        self.session, self.repo, self.token = session, repo, token
        self.allow_private = allow_private
        self.origin = origin_of(repo.endpoint)

    async def _call(self, url: str, method: str = "GET") -> tuple[int, Any, bytes]:
        """Status, headers and body of `url`, following the Hub's own redirects."""
        import aiohttp

        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        from aisdl.engine.egress import EgressBlocked, check_address, is_ip_literal

        timeout = aiohttp.ClientTimeout(total=API_TIMEOUT)
        try:
            for _ in range(API_REDIRECTS + 1):
                if origin_of(url) != self.origin:
                    raise SourceError(f"the Hub sent us to another site ({origin_of(url)[1]}):"
                                      " not followed", transient=False)
                if is_ip_literal(host := self.origin[1]):  # the resolver never sees those
                    check_address(host.strip("[]"), self.allow_private)
                async with self.session.request(method, url, headers=headers, timeout=timeout,
                                                allow_redirects=False) as resp:
                    body = await resp.read() if method == "GET" else b""
                    location = resp.headers.get("Location")
                    if resp.status in (301, 302, 307, 308) and location and method == "GET":
                        url = urljoin(url, location)
                        continue
                    return resp.status, resp.headers, body
        except EgressBlocked as exc:
            raise SourceError(f"dload: {exc}", transient=False) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise SourceError(f"cannot reach the Hugging Face Hub at {self.repo.endpoint}:"
                              f" {exc or type(exc).__name__}", transient=True) from exc
        raise SourceError("the Hub redirected too many times", transient=False)

    def _refused(self, status: int, headers: Any, what: str) -> HubError:
        """One clear error for each way the Hub says no."""
        code = headers.get("X-Error-Code", "")
        said = headers.get("X-Error-Message", "")
        repo = self.repo
        with_token = "the token given" if self.token else "no token (give --hf-auth, or set" \
            " HF_TOKEN on the node)"
        if code == "GatedRepo":
            return HubError(f"Hugging Face {repo.what} is gated: accept its conditions on the"
                            f" Hub with the account of the token; the Hub refused {with_token}"
                            f" ({status})", 403)
        if code == "RevisionNotFound":
            return HubError(f"revision {repo.revision!r} not found in Hugging Face {repo.what}",
                            404)
        if code == "EntryNotFound":
            return HubError(f"{what} not found in Hugging Face {repo.what} at revision"
                            f" {repo.revision!r}", 404)
        if status == 401 and said == "Invalid credentials in Authorization header":
            return HubError(f"the Hugging Face Hub refused the token: invalid credentials"
                            f" (401, {repo.what})", 403)
        if code == "RepoNotFound" or status in (401, 404):
            private = " or it is private and the Hub refused the token" if self.token else \
                " or it is private: give a token with --hf-auth (or HF_TOKEN on the node)"
            return HubError(f"Hugging Face {repo.what} not found at {repo.endpoint}{private}"
                            f" ({status})", 404)
        if status == 403:
            return HubError(f"the Hugging Face Hub denied access to {repo.what} ({status}"
                            f"{': ' + said if said else ''})", 403)
        return HubError(f"the Hugging Face Hub answered {status} for {what} of {repo.what}"
                        f"{': ' + said if said else ''}", 502)

    async def resolve(self) -> str:
        """The commit the revision names now."""
        status, headers, body = await self._call(
            f"{self.repo.api}/revision/{quote(self.repo.revision, safe='')}")
        if status != 200:
            raise self._refused(status, headers, "the revision")
        try:
            commit = json.loads(body)["sha"]
        except (ValueError, KeyError, TypeError):
            commit = None
        if not isinstance(commit, str) or not _COMMIT.match(commit):
            raise HubError(f"the Hub's answer for {self.repo.what} names no commit", 502)
        return commit

    async def pages(self, path: str = "", recursive: bool = True) -> AsyncGenerator[Page, None]:
        """The tree at the commit, a page at a time, with whether it was the last page."""
        url: str | None = f"{self.repo.api}/tree/{self.repo.commit}" + (
            f"/{quote(path)}" if path else "") + ("?recursive=true" if recursive else "")
        for _ in range(MAX_PAGES):
            assert url is not None
            status, headers, body = await self._call(url)
            if status != 200:
                raise self._refused(status, headers, f"folder {path!r}" if path else "the tree")
            try:
                page = json.loads(body)
                if not isinstance(page, list) or not all(isinstance(e, dict) for e in page):
                    raise ValueError("not a list of entries")
            except ValueError as exc:
                raise HubError(f"the Hub's tree of {self.repo.what} is not valid: {exc}",
                               502) from exc
            nxt = _LINK_NEXT.search(headers.get("Link", ""))
            url = urljoin(url, nxt.group(1)) if nxt else None
            yield page, url is None
            if url is None:
                return
        raise HubError(f"the Hub's tree of {self.repo.what} did not end", 502)

    async def probe(self, path: str) -> None:
        """HEAD one file's resolve URL (not following it): a gated repository shows here, its
        tree being public."""
        status, headers, _ = await self._call(self.repo.resolve_url(path), "HEAD")
        if status >= 400:
            raise self._refused(status, headers, f"file {path!r}")


def expected(entry: dict[str, Any]) -> SourceObject:
    """What a tree entry says a file's bytes are: an LFS file's sha256 and size, else its size
    and git blob id (the Hub's ETag for such a file)."""
    lfs = entry.get("lfs")
    if isinstance(lfs, dict) and isinstance(lfs.get("oid"), str):
        size = lfs.get("size", entry.get("size"))
        return SourceObject(source=HF_SOURCE, size=size if isinstance(size, int) else None,
                            sha256=lfs["oid"].lower())
    size, oid = entry.get("size"), entry.get("oid")
    return SourceObject(source=HF_SOURCE, size=size if isinstance(size, int) else None,
                        etag=oid if isinstance(oid, str) and oid else None)


def _files(page: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in page if e.get("type") == "file" and isinstance(e.get("path"), str)]


def open_session(allow_private: bool) -> aiohttp.ClientSession:
    """A session for the Hub's API at job start: every address it connects to is checked."""
    import aiohttp

    from aisdl.engine.curl import user_agent
    from aisdl.engine.egress import EgressResolver

    connector = aiohttp.TCPConnector(limit=4, resolver=EgressResolver(allow_private))
    return aiohttp.ClientSession(connector=connector, trust_env=False,
                                 headers={"User-Agent": user_agent()})


async def prepare(repo: HfRepo, token: str, session: aiohttp.ClientSession,
                  allow_private: bool) -> HfRepo:
    """At job start: the revision's commit, proof that the file (or one file of the
    repository) can be read with this token, and the number of files when the first page of
    the listing holds them all. Raises HubError (or SourceError: the Hub is unreachable)."""
    from dataclasses import replace

    hub = Hub(session, repo, token, allow_private)
    try:
        return await _prepared(hub, replace(repo, commit=await hub.resolve()))
    except SourceError as err:  # the Hub is unreachable, or sent us elsewhere
        raise HubError(err.message, 502) from err


async def _prepared(hub: Hub, repo: HfRepo) -> HfRepo:
    from dataclasses import replace

    hub.repo = repo
    if repo.file:
        async with contextlib.aclosing(hub.pages(posixpath.dirname(repo.file),
                                                 recursive=False)) as pages:
            async for page, _ in pages:
                if any(e["path"] == repo.file for e in _files(page)):
                    break
            else:
                raise HubError(f"file {repo.file!r} not found in Hugging Face {repo.what} at"
                               f" revision {repo.revision!r}", 404)
        await hub.probe(repo.file)
        return replace(repo, files=1)
    async with contextlib.aclosing(hub.pages()) as pages:
        async for page, last in pages:
            files = _files(page)
            if files:
                await hub.probe(files[0]["path"])
            return replace(repo, files=len(files) if last else -1)
    return repo


async def items(repo: HfRepo, token: str, session: aiohttp.ClientSession, allow_private: bool,
                start: int = 0) -> AsyncIterator[tuple[int, str, str, SourceObject]]:
    """(index, object name, resolve URL, what its bytes must be) of every file of the job, in
    the listing's order (fixed for a commit), from index `start` on."""
    hub = Hub(session, repo, token, allow_private)
    folder = posixpath.dirname(repo.file) if repo.file else ""
    index = 0
    try:
        async for page, _ in hub.pages(folder, recursive=not repo.file):
            for entry in _files(page):
                if repo.file and entry["path"] != repo.file:
                    continue
                if index >= start:
                    yield (index, repo.object_name(entry["path"]),
                           repo.resolve_url(entry["path"]), expected(entry))
                index += 1
    except HubError as err:  # during the job: the listing's error
        raise SourceError(err.message, transient=False) from err
