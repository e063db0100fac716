"""The start request of a download job: parsing, validation (with AIS's messages) and the lazy
stream of (index, object name, link) items it describes."""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from aisdl.errors import BadRequest
from aisdl.jobs.template import RangeTemplate
from aisdl.models import Bucket
from aisdl.sources.base import SourceObject
from aisdl.store.paths import normalize_object_name
from aisdl.units import parse_duration

KINDS = ("single", "multi", "range", "backend")
FETCHABLE_SCHEMES = ("http", "https", "s3", "gs", "az")


@dataclass(frozen=True)
class Item:
    index: int
    name: str
    link: str
    listed: SourceObject | None = None  # validators from a bucket listing (backend jobs)
    evict: bool = False                 # sync: the source no longer has it; drop our copy
    error: str = ""                     # why it cannot be downloaded (its name is refused)


@dataclass(frozen=True)
class JobSpec:
    kind: str
    bucket: Bucket
    description: str
    timeout: float | None = None          # per-request timeout of the source fetch, seconds
    connections: int = 0                   # 0 = node default
    bytes_per_hour: int = 0                # 0 = unlimited
    headers: dict[str, list[str]] = field(default_factory=dict)
    # single
    link: str = ""
    object_name: str = ""
    # multi: (name, link) pairs, deduplicated by name (last wins)
    objects: tuple[tuple[str, str], ...] = ()
    # range
    template: str = ""
    subdir: str = ""
    # backend: every object of `source` (the destination's remote bucket) named prefix...suffix
    source: Bucket | None = None
    prefix: str = ""
    suffix: str = ""
    sync: bool = False

    @property
    def total(self) -> int:
        """How many objects the job has; -1 when unknown until the listing ends (backend)."""
        if self.kind == "single":
            return 1
        if self.kind == "multi":
            return len(self.objects)
        if self.kind == "backend":
            return -1
        return len(RangeTemplate(self.template))

    def items(self, start: int = 0) -> Iterator[Item]:
        """Items from index `start` on, produced lazily (a range is never expanded in memory)."""
        if self.kind == "backend":
            raise ValueError("backend jobs list their items asynchronously (jobs.listing)")
        if self.kind == "single":
            if start == 0:
                yield Item(0, self.object_name, self.link)
        elif self.kind == "multi":
            for i in range(start, len(self.objects)):
                yield Item(i, *self.objects[i])
        else:
            for i, link in enumerate(RangeTemplate(self.template).iter_from(start), start):
                try:
                    name, error = range_name(self.subdir, link), ""
                except BadRequest as exc:  # only the first name is checked up front
                    name = posixpath.join(self.subdir.strip("/"), base_name(link)).lstrip("/")
                    error = exc.message
                yield Item(i, name, with_scheme(link), error=error)

    def to_json(self) -> str:
        """The normalized request, stored with the job so it can resume after a restart."""
        body = {
            "type": self.kind, "bucket": self.bucket.to_json(), "description": self.description,
            "timeout": self.timeout, "limits": {"connections": self.connections,
                                                "bytes_per_hour": self.bytes_per_hour},
            "headers": self.headers, "link": self.link, "object_name": self.object_name,
            "objects": [list(p) for p in self.objects], "template": self.template,
            "subdir": self.subdir, "prefix": self.prefix, "suffix": self.suffix,
            "synchronize": self.sync,
            "source": self.source.to_json() if self.source else None,
        }
        return json.dumps(body)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        d = json.loads(text)
        return cls(
            kind=d["type"], bucket=Bucket(d["bucket"]["provider"], d["bucket"]["name"]),
            description=d["description"], timeout=d["timeout"],
            connections=d["limits"]["connections"], bytes_per_hour=d["limits"]["bytes_per_hour"],
            headers=d["headers"], link=d["link"], object_name=d["object_name"],
            objects=tuple((n, lk) for n, lk in d["objects"]), template=d["template"],
            subdir=d["subdir"], prefix=d.get("prefix", ""), suffix=d.get("suffix", ""),
            sync=d.get("synchronize", False),
            source=Bucket(d["source"]["provider"], d["source"]["name"]) if d.get("source")
            else None,
        )


def with_scheme(link: str) -> str:
    """AIS rule: a link without `://` is fetched over plain http."""
    return link if "://" in link else "http://" + link


def check_link(link: str) -> str:
    link = with_scheme(link)
    scheme = link.split("://", 1)[0].lower()
    if scheme not in FETCHABLE_SCHEMES:
        raise BadRequest(f"invalid scheme: {scheme} (this node downloads http(s)://, s3://,"
                         " gs:// and az:// links)")
    return link


def base_name(link: str) -> str:
    """Last `/`-separated element of a link, trailing slashes ignored (Go's path.Base)."""
    base = posixpath.basename(link.rstrip("/"))
    return base or "."


def range_name(subdir: str, link: str) -> str:
    return normalize_object_name(posixpath.join(subdir.strip("/"), base_name(link)).lstrip("/"))


def parse_start_request(raw: bytes) -> JobSpec:
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise BadRequest(f"failed to unmarshal download request: {exc}") from exc
    if not isinstance(body, dict) or not body.get("type"):
        raise BadRequest("failed to unmarshal download request: 'type' field is empty")
    kind = body["type"]
    if kind not in KINDS:
        raise BadRequest(
            "input does not match any of the supported formats (single, range, multi, backend)")
    bck = body.get("bucket") or {}
    if not isinstance(bck, dict) or not bck.get("name"):
        raise BadRequest("missing 'bucket.name'")
    base = dict(kind=kind, bucket=Bucket.of(bck["name"], bck.get("provider") or "ais"),
                **_limits(body))
    if body.get("progress_interval"):
        parse_duration(str(body["progress_interval"]), "progress interval")
    if kind == "single":
        spec = _single(body, base)
    elif kind == "multi":
        spec = _multi(body, base)
    elif kind == "range":
        spec = _range(body, base)
    else:
        spec = _backend(body, base)
    return spec


def _limits(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"description": str(body.get("description") or "")}
    timeout = body.get("timeout")
    if timeout not in (None, "", 0, "0", "0s"):
        try:
            out["timeout"] = parse_duration(str(timeout), "timeout")
        except BadRequest as exc:
            raise BadRequest(f"failed to parse timeout field: {exc.message}") from exc
        if out["timeout"] <= 0:
            out.pop("timeout")
    limits = body.get("limits") or {}
    for key, attr in (("connections", "connections"), ("bytes_per_hour", "bytes_per_hour")):
        value = limits.get(key, 0) or 0
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadRequest(f"'limit.{key}' must be an integer (got: {value!r})")
        if value < 0:
            raise BadRequest(f"'limit.{key}' must be non-negative (got: {value})")
        out[attr] = value
    headers = body.get("headers") or {}
    if not isinstance(headers, dict) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in headers.values()):
        raise BadRequest("'headers' must map header names to arrays of strings")
    out["headers"] = headers
    return out


def _single(body: dict[str, Any], base: dict[str, Any]) -> JobSpec:
    link = str(body.get("link") or "")
    if not link:
        raise BadRequest("missing 'link' in the request body")
    link = check_link(link)
    name = str(body.get("object_name") or "") or base_name(link)
    if name in (".", "/"):
        raise BadRequest("can not extract a valid 'object_name' from the provided download 'link'")
    spec = JobSpec(link=link, object_name=normalize_object_name(name), **base)
    return _described(spec, f"{link} -> {spec.bucket.cname}/{spec.object_name}")


def _multi(body: dict[str, Any], base: dict[str, Any]) -> JobSpec:
    objects = body.get("objects")
    if objects is None:
        raise BadRequest("body should not be empty")
    pairs: dict[str, str] = {}
    if isinstance(objects, dict):
        for name, link in objects.items():
            if not isinstance(link, str):
                raise BadRequest(f"values in map should be strings, found: {type(link).__name__}")
            pairs[normalize_object_name(name)] = check_link(link)
    elif isinstance(objects, list):
        for link in objects:
            if not isinstance(link, str):
                raise BadRequest(
                    f"expected download link to be a string, got: {type(link).__name__}")
            name = base_name(link)
            if name in (".", "/"):
                raise BadRequest(f'failed to extract object name from the download "{link}"')
            pairs[normalize_object_name(name)] = check_link(link)
    else:
        raise BadRequest("JSON body should be map (string -> string) or array of strings,"
                         f" found: {type(objects).__name__}")
    spec = JobSpec(objects=tuple(pairs.items()), **base)
    return _described(spec, f"multi-download -> {spec.bucket.cname}")


def _range(body: dict[str, Any], base: dict[str, Any]) -> JobSpec:
    template = str(body.get("template") or "")
    if not template:
        raise BadRequest("missing 'template' in the request body")
    tmpl = RangeTemplate(template)  # validates syntax and the 10M cap
    first = next(iter(tmpl), None)
    if first is not None:
        check_link(first)
        range_name(str(body.get("subdir") or ""), first)
    spec = JobSpec(template=template, subdir=str(body.get("subdir") or ""), **base)
    return _described(spec, f"{template} -> {spec.bucket.cname}")


def _backend(body: dict[str, Any], base: dict[str, Any]) -> JobSpec:
    spec = JobSpec(prefix=str(body.get("prefix") or ""), suffix=str(body.get("suffix") or ""),
                   sync=bool(body.get("synchronize")), **base)
    return _described(spec, f"remote bucket prefetch -> {spec.bucket.cname}")


def _described(spec: JobSpec, auto: str) -> JobSpec:
    return spec if spec.description else replace(spec, description=auto)


def check_regex(regex: str) -> re.Pattern[str]:
    try:
        return re.compile(regex)
    except re.error as exc:
        raise BadRequest(f"invalid regex {regex!r}: {exc}") from exc

