"""The start request of a download job: parsing, validation (with AIS's messages) and the lazy
stream of (index, object name, link) items it describes."""

from __future__ import annotations

import itertools
import json
import math
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn, Protocol

import re2  # type: ignore[import-untyped]

from aisdl.engine.blob import DEFAULT_CONNS, MAX_CONNS
from aisdl.errors import BadRequest, parse_json
from aisdl.jobs.template import RangeTemplate
from aisdl.models import Bucket
from aisdl.sources.base import SourceObject
from aisdl.sources.hf import HfRepo, check_repo
from aisdl.store.paths import normalize_object_name
from aisdl.units import parse_duration

KINDS = ("single", "multi", "range", "backend", "hf")
FETCHABLE_SCHEMES = ("http", "https", "s3", "gs", "az")

# Bounds of one request: each is far beyond what a real job needs, and each keeps one request
# from costing the node minutes of work or gigabytes of memory.
MAX_OBJECTS = 1_000_000          # names in one multi request (a bigger list: several jobs)
MAX_DESCRIPTION = 4096           # characters; auto descriptions are cut to it, user ones refused
MAX_REGEX = 1024                 # characters of a job-list regex
MAX_LINK = 32 << 10              # characters of a link or template (servers take 8-16 KiB)
MAX_HEADER_BYTES = 64 << 10      # names and values of a job's headers, all together
MAX_BYTES_PER_HOUR = 2**63 - 1   # what the database and the token bucket hold
MAX_TIMEOUT = 30 * 24 * 3600.0   # seconds: beyond, a timer overflows; no transfer needs more
MIN_DOWNLOAD_TIMEOUT = 0.01      # seconds: a shorter limit per file could never be met

# The fields of a start request (spec 4.2): every type's, then each type's own. A field of
# another type is refused when it says something (it would be ignored), not when it is empty:
# AIStore's Go client sends its zero values.
_BASE_FIELDS = frozenset(("type", "bucket", "description", "timeout", "download_timeout",
                          "progress_interval", "limits", "headers", "etl_name", "etl_args",
                          "blob-threshold", "blob-num-workers"))
_KIND_FIELDS = {"single": ("link", "object_name", "from_remote"), "multi": ("objects",),
                "range": ("template", "subdir"),
                "backend": ("prefix", "suffix", "synchronize", "latest"),
                "hf": ("hf_model", "hf_dataset", "hf_file", "hf_revision", "hf_auth", "subdir")}
_BUCKET_FIELDS = ("name", "provider", "namespace")
_LIMIT_FIELDS = ("connections", "bytes_per_hour")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 9110: a field name is a token; a value may hold tabs and visible or non-ASCII characters.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


# A template's names that need no normalizing: plain segments, ranges in the last one.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
# An item of a job as its stream makes it: index, object name, link, why it cannot be
# downloaded (its name is refused), validators from a bucket listing (backend jobs), what its
# bytes must be (a listing pinned to a commit)
Entry = tuple[int, str, str, str, SourceObject | None, SourceObject | None]


@dataclass(frozen=True)
class Item:
    index: int
    name: str
    link: str
    listed: SourceObject | None = None  # validators from a bucket listing (backend jobs)
    evict: bool = False                 # sync: the source no longer has it; drop our copy
    error: str = ""                     # why it cannot be downloaded (its name is refused)
    expect: SourceObject | None = None  # what its bytes must be (a listing pinned to a commit)


@dataclass(frozen=True)
class JobSpec:
    kind: str
    bucket: Bucket
    description: str
    timeout: float | None = None          # per-request timeout of the source fetch, seconds
    download_timeout: float | None = None  # the most one file may take, all tries, seconds
    connections: int = 0                   # 0 = node default
    bytes_per_hour: int = 0                # 0 = unlimited
    headers: dict[str, list[str]] = field(default_factory=dict)
    blob_threshold: int = 0                # objects this big come in ranged parts (0: never)
    blob_conns: int = DEFAULT_CONNS        # connections of one such object at most
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
    # hf: a Hugging Face repository at a commit; its token is never stored (nor shown)
    hf: HfRepo | None = None
    hf_token: str = field(default="", repr=False, compare=False)
    latest: bool = False  # ask the source for each held object's version, not the listing

    @property
    def total(self) -> int:
        """How many objects the job has; -1 when unknown until the listing ends (backend)."""
        if self.kind == "single":
            return 1
        if self.kind == "multi":
            return len(self.objects)
        if self.kind == "backend":
            return -1
        if self.hf is not None:
            return self.hf.files
        return len(RangeTemplate(self.template))

    def entries(self, start: int = 0) -> Iterator[Entry]:
        """The job's items from index `start` on, produced lazily (a range is never expanded in
        memory), as plain tuples: a template makes millions of them."""
        if self.kind in ("backend", "hf"):
            raise ValueError(f"{self.kind} jobs list their items asynchronously (jobs.run)")
        if self.kind == "single":
            if start == 0:
                yield 0, self.object_name, self.link, "", None, None
        elif self.kind == "multi":
            for i in range(start, len(self.objects)):
                name, link = self.objects[i]
                yield i, name, link, "", None, None
        else:
            links = RangeTemplate(with_scheme(self.template)).iter_from(start)
            names = self._plain_names()
            if names is not None:  # names made at C speed, as the links are
                yield from zip(itertools.count(start), names.iter_from(start), links,
                               itertools.repeat(""), itertools.repeat(None),
                               itertools.repeat(None))
                return
            for i, link in enumerate(links, start):
                try:
                    name, error = range_name(self.subdir, link), ""
                except BadRequest as exc:  # only the first name is checked up front
                    name = posixpath.join(self.subdir.strip("/"), base_name(link)).lstrip("/")
                    error = exc.message
                yield i, name, link, error, None, None

    def _plain_names(self) -> RangeTemplate | None:
        """The template of the object names, when every name is plain (letters, digits and
        `._-/`) and valid by construction: the links' last element, ranges and all, under the
        subdir. Then no name needs normalizing. None when the names need `range_name`."""
        template = self.template
        tmpl = RangeTemplate(template)
        cut = tmpl.prefix.rfind("/")
        tail = template[cut + 1:]
        folder = self.subdir.strip("/")
        literal = re.sub(r"\{[^}]*\}", "0", tail)
        if "/" in tail or not _PLAIN_NAME.fullmatch(f"{folder}/{literal}" if folder else literal):
            return None
        names = RangeTemplate(f"{folder}/{tail}" if folder else tail)
        for index in {0, tmpl.count - 1}:  # the same names as `range_name`, or not used
            try:
                if names.name_at(index) != range_name(self.subdir, tmpl.name_at(index)):
                    return None
            except BadRequest:
                return None
        return names

    def to_json(self) -> str:
        """The normalized request, stored with the job so it can resume after a restart."""
        body = {
            "type": self.kind, "bucket": self.bucket.to_json(), "description": self.description,
            "timeout": self.timeout, "download_timeout": self.download_timeout,
            "limits": {"connections": self.connections, "bytes_per_hour": self.bytes_per_hour},
            "headers": self.headers, "link": self.link, "object_name": self.object_name,
            "objects": [list(p) for p in self.objects], "template": self.template,
            "subdir": self.subdir, "prefix": self.prefix, "suffix": self.suffix,
            "synchronize": self.sync, "latest": self.latest,
            "source": self.source.to_json() if self.source else None,
            "hf": self.hf.to_json() if self.hf else None,
            "blob-threshold": self.blob_threshold, "blob-num-workers": self.blob_conns,
        }
        return json.dumps(body)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        d = json.loads(text)
        return cls(
            kind=d["type"], bucket=Bucket(d["bucket"]["provider"], d["bucket"]["name"]),
            description=d["description"], timeout=d["timeout"],
            download_timeout=d.get("download_timeout"),
            connections=d["limits"]["connections"], bytes_per_hour=d["limits"]["bytes_per_hour"],
            headers=d["headers"], link=d["link"], object_name=d["object_name"],
            objects=tuple((n, lk) for n, lk in d["objects"]), template=d["template"],
            subdir=d["subdir"], prefix=d.get("prefix", ""), suffix=d.get("suffix", ""),
            sync=d.get("synchronize", False), latest=d.get("latest", False),
            source=Bucket(d["source"]["provider"], d["source"]["name"]) if d.get("source")
            else None,
            hf=HfRepo.from_json(d["hf"]) if d.get("hf") else None,
            blob_threshold=d.get("blob-threshold", 0),
            blob_conns=d.get("blob-num-workers", DEFAULT_CONNS),
        )


def with_scheme(link: str) -> str:
    """AIS rule: a link without `://` is fetched over plain http."""
    return link if "://" in link else "http://" + link


def check_link(link: str) -> str:
    """A link the node may fetch: a known scheme and no control character, which libcurl would
    send raw (CR/LF in a link would add lines to the request: header injection)."""
    if len(link) > MAX_LINK:
        raise BadRequest(f"link is too long: {len(link)} characters (at most {MAX_LINK}):"
                         f" {_clip(link)!r}")
    if _CONTROL.search(link):
        raise BadRequest(f"link {_clip(link)!r} contains a control character (CR, LF, NUL ...)")
    link = with_scheme(link)
    scheme = link.split("://", 1)[0].lower()
    if scheme not in FETCHABLE_SCHEMES:
        raise BadRequest(f"invalid scheme: {_clip(scheme)} (this node downloads http(s)://,"
                         " s3://, gs:// and az:// links)")
    return link


def base_name(link: str) -> str:
    """Last `/`-separated element of a link, trailing slashes ignored (Go's path.Base)."""
    base = posixpath.basename(link.rstrip("/"))
    return base or "."


def range_name(subdir: str, link: str) -> str:
    """A template item's object name: `subdir/<last element of the link>`, normalized (runs
    per item of a template: string operations rather than posixpath's)."""
    base = link.rstrip("/").rpartition("/")[2] or "."
    folder = subdir.strip("/")
    return normalize_object_name(f"{folder}/{base}" if folder else base)


def parse_start_request(raw: bytes, max_connections: int) -> JobSpec:
    """The job a start request describes, or BadRequest. `max_connections` is the node's limit,
    the most a job may ask for. Costs time in proportion to the body: a server runs it off its
    event loop when the body is big."""
    body = parse_json(raw or b"null", "download request")
    if not isinstance(body, dict) or not body.get("type"):
        raise BadRequest("failed to unmarshal download request: 'type' field is empty")
    kind = _text(body, "type")
    if kind not in KINDS:
        raise BadRequest(
            "input does not match any of the supported formats (single, range, multi, backend,"
            " hf)")
    _check_fields(body, kind)
    base = dict(kind=kind, bucket=_bucket(body), **_limits(body, max_connections))
    interval = body.get("progress_interval")
    if interval not in (None, ""):
        _duration(interval, "progress_interval", "invalid progress interval")
    if kind == "single":
        spec = _single(body, base)
    elif kind == "multi":
        spec = _multi(body, base)
    elif kind == "range":
        spec = _range(body, base)
    elif kind == "hf":
        spec = _hf(body, base)
    else:
        spec = _backend(body, base)
    return spec


def _check_fields(body: dict[str, Any], kind: str) -> None:
    own = _KIND_FIELDS[kind]
    for key, value in body.items():
        if key in _BASE_FIELDS or key in own:
            continue
        if not any(key in fields for fields in _KIND_FIELDS.values()):
            _unknown(key, "the download request", sorted(_BASE_FIELDS.union(own)))
        if value not in (None, "", False, [], {}):
            raise BadRequest(f"'{key}' does not apply to a {kind} download")
    if _text(body, "etl_name") or _text(body, "etl_args"):
        raise BadRequest("ETL is not supported by this node ('etl_name', 'etl_args')")
    if _flag(body, "from_remote"):
        raise BadRequest("'from_remote' is not supported by this node: give the 'link' to"
                         " download")


def _unknown(key: str, where: str, expected: Iterable[str]) -> NoReturn:
    raise BadRequest(f"unknown field {_clip(key)!r} in {where}"
                     f" (expected some of: {', '.join(expected)})")


def _bucket(body: dict[str, Any]) -> Bucket:
    bck = _object(body, "bucket")
    for key in bck:
        if key not in _BUCKET_FIELDS:
            _unknown(key, "'bucket'", _BUCKET_FIELDS)
    name = _text(bck, "name", "bucket.name")
    if not name:
        raise BadRequest("missing 'bucket.name'")
    namespace = _object(bck, "namespace", "bucket.namespace")
    if any(namespace.get(k) for k in namespace):
        raise BadRequest("bucket namespaces are not supported by this node"
                         " ('bucket.namespace' must be empty)")
    return Bucket.of(name, _text(bck, "provider", "bucket.provider") or "ais")


def _limits(body: dict[str, Any], max_connections: int) -> dict[str, Any]:
    description = _text(body, "description")
    if len(description) > MAX_DESCRIPTION:
        raise BadRequest(f"'description' is too long: {len(description)} characters (at most"
                         f" {MAX_DESCRIPTION})")
    out: dict[str, Any] = {"description": description}
    timeout = body.get("timeout")
    if timeout not in (None, ""):
        seconds = _duration(timeout, "timeout", "failed to parse timeout field")
        if seconds > 0:
            out["timeout"] = seconds
    limit = body.get("download_timeout")
    if limit not in (None, ""):
        seconds = _duration(limit, "download_timeout", "invalid download timeout")
        if 0 < seconds < MIN_DOWNLOAD_TIMEOUT:
            raise BadRequest(f"invalid download timeout: 'download_timeout' must be 0 (no limit)"
                             f" or at least {MIN_DOWNLOAD_TIMEOUT * 1000:.0f}ms"
                             f" (got: {_clip(str(limit))})")
        if seconds > 0:
            out["download_timeout"] = seconds
    limits = _object(body, "limits")
    for key in limits:
        if key not in _LIMIT_FIELDS:
            _unknown(key, "'limits'", _LIMIT_FIELDS)
    bounds = {"connections": (max_connections, f"{max_connections}, this node's limit"),
              "bytes_per_hour": (MAX_BYTES_PER_HOUR, "2^63 - 1")}
    for key in _LIMIT_FIELDS:
        value = limits.get(key)
        if value is None:
            value = 0
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadRequest(f"'limit.{key}' must be an integer (got: {_clip(repr(value))})")
        if value < 0:
            raise BadRequest(f"'limit.{key}' must be non-negative (got: {value})")
        most, said = bounds[key]
        if value > most:
            raise BadRequest(f"'limit.{key}' must be at most {said} (got: {_clip(str(value))})")
        out[key] = value
    out["headers"] = _headers(body)
    out.update(_blob(body))
    return out


def _blob(body: dict[str, Any]) -> dict[str, int]:
    """`blob-threshold` (bytes; 0: no blob downloads) and `blob-num-workers` (connections of
    one blob, AIS's name; 0: the default), as AIS's prefetch message names them."""
    out = {}
    for key, name, most in (("blob-threshold", "blob_threshold", MAX_BYTES_PER_HOUR),
                            ("blob-num-workers", "blob_conns", MAX_CONNS)):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadRequest(f"'{key}' must be an integer (got: {_clip(repr(value))})")
        if not 0 <= value <= most:
            raise BadRequest(f"'{key}' must be between 0 and {most} (got: {_clip(str(value))})")
        out[name] = value
    if out.get("blob_conns") and not out.get("blob_threshold"):
        raise BadRequest("'blob-num-workers' takes effect only with 'blob-threshold'")
    if not out.get("blob_conns"):
        out.pop("blob_conns", None)
    return out


def _duration(value: Any, key: str, failed: str) -> float:
    """A Go duration string, or a number of seconds; finite, non-negative and bounded."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadRequest(f"'{key}' must be a duration such as \"30s\", got: {_json_type(value)}")
    if isinstance(value, str):
        try:
            seconds = parse_duration(value, key)
        except BadRequest as exc:
            raise BadRequest(f"{failed}: {exc.message}") from exc
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_TIMEOUT:
        raise BadRequest(f"{failed}: '{key}' must be between 0 and {MAX_TIMEOUT:.0f}s"
                         f" (got: {_clip(str(value))})")
    return seconds


def _headers(body: dict[str, Any]) -> dict[str, list[str]]:
    """`http.Header`: names → arrays of values. Names must be HTTP tokens and values free of
    control characters: libcurl sends both as they are, so a CR/LF would add header lines."""
    headers = _object(body, "headers")
    size = 0
    for name, values in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise BadRequest(f"invalid header name {_clip(name)!r}: a header name is letters,"
                             " digits and !#$%&'*+-.^_`|~ only")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise BadRequest("'headers' must map header names to arrays of strings"
                             f" (header {name!r})")
        if any(_HEADER_VALUE_CONTROL.search(v) for v in values):
            raise BadRequest(f"header {name!r}: a value contains a control character"
                             " (CR, LF, NUL ...)")
        size += len(name) + sum(len(v) for v in values)
        if size > MAX_HEADER_BYTES:
            raise BadRequest(f"'headers' are too large: more than {MAX_HEADER_BYTES} characters"
                             " of names and values")
    return headers


def _single(body: dict[str, Any], base: dict[str, Any]) -> JobSpec:
    link = _text(body, "link")
    if not link:
        raise BadRequest("missing 'link' in the request body")
    link = check_link(link)
    name = _text(body, "object_name") or base_name(link)
    if name in (".", "/"):
        raise BadRequest("can not extract a valid 'object_name' from the provided download 'link'")
    spec = JobSpec(link=link, object_name=normalize_object_name(name), **base)
    return _described(spec, f"{link} -> {spec.bucket.cname}/{spec.object_name}")


def _multi(body: dict[str, Any], base: dict[str, Any]) -> JobSpec:
    objects = body.get("objects")
    if objects is None:
        raise BadRequest("body should not be empty")
    if isinstance(objects, dict | list) and len(objects) > MAX_OBJECTS:
        raise BadRequest(f"too many objects: {len(objects)} (at most {MAX_OBJECTS} in one"
                         " request: download a longer list as several jobs)")
    pairs: dict[str, str] = {}
    if isinstance(objects, dict):
        for link in objects.values():
            if not isinstance(link, str):
                raise BadRequest(f"values in map should be strings, found: {type(link).__name__}")
        for name, link in objects.items():
            pairs[normalize_object_name(name)] = check_link(link)
    elif isinstance(objects, list):
        for link in objects:
            if not isinstance(link, str):
                raise BadRequest(
                    f"expected download link to be a string, got: {type(link).__name__}")
        for link in objects:
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
    template = _text(body, "template")
    if not template:
        raise BadRequest("missing 'template' in the request body")
    if len(template) > MAX_LINK:
        raise BadRequest(f"template is too long: {len(template)} characters (at most"
                         f" {MAX_LINK}): {_clip(template)!r}")
    subdir = _text(body, "subdir")
    tmpl = RangeTemplate(template)  # validates syntax and the 10M cap
    first = next(iter(tmpl), None)
    if first is not None:
        check_link(first)  # every name holds all of the template's text: one check covers all
        range_name(subdir, first)
    spec = JobSpec(template=template, subdir=subdir, **base)
    return _described(spec, f"{template} -> {spec.bucket.cname}")


def _backend(body: dict[str, Any], base: dict[str, Any]) -> JobSpec:
    spec = JobSpec(prefix=_text(body, "prefix"), suffix=_text(body, "suffix"),
                   sync=_flag(body, "synchronize"), latest=_flag(body, "latest"), **base)
    return _described(spec, f"remote bucket prefetch -> {spec.bucket.cname}")


def _hf(body: dict[str, Any], base: dict[str, Any]) -> JobSpec:
    """A Hugging Face repository (or one file of it) into `subdir`; the node asks the Hub what
    the revision is at job start (api.download)."""
    model, dataset = _text(body, "hf_model"), _text(body, "hf_dataset")
    if bool(model) == bool(dataset):
        raise BadRequest("a Hugging Face download names one repository: 'hf_model' or"
                         " 'hf_dataset'")
    repo_type, repo = ("model", model) if model else ("dataset", dataset)
    revision, file = _text(body, "hf_revision") or "main", _text(body, "hf_file")
    check_repo(repo_type, repo, revision, file)
    token = _text(body, "hf_auth").strip()
    if _HEADER_VALUE_CONTROL.search(token):
        raise BadRequest("'hf_auth' contains a control character (CR, LF, NUL ...)")
    subdir = _text(body, "subdir").strip("/")
    if subdir:
        subdir = normalize_object_name(subdir)
    spec = JobSpec(hf=HfRepo(repo_type, repo, revision, file, subdir), hf_token=token, **base)
    what = f"{repo}@{revision}" + (f"/{file}" if file else "")
    return _described(spec, f"hf {repo_type} {what} -> {spec.bucket.cname}/{subdir}")


def _described(spec: JobSpec, auto: str) -> JobSpec:
    """The user's description, else `auto` cut to MAX_DESCRIPTION (it may hold a whole link or
    template, and every job list matches its regex against it)."""
    if spec.description:
        return spec
    if len(auto) > MAX_DESCRIPTION:
        auto = auto[:MAX_DESCRIPTION - 1] + "\N{HORIZONTAL ELLIPSIS}"
    return replace(spec, description=auto)


# -- JSON fields: one type each, refused by name otherwise ---------------------------------------
def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {str: "string", int: "number", float: "number", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _text(d: dict[str, Any], key: str, label: str = "") -> str:
    """A string field; absent or null is ""."""
    value = d.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"'{label or key}' must be a string, got: {_json_type(value)}")
    return value


def _flag(d: dict[str, Any], key: str) -> bool:
    value = d.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{key}' must be true or false, got: {_json_type(value)}")
    return value


def _object(d: dict[str, Any], key: str, label: str = "") -> dict[str, Any]:
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"'{label or key}' must be a JSON object, got: {_json_type(value)}")
    return value


def _clip(text: str, most: int = 200) -> str:
    """Text echoed in an error message: a 1 MB link should not make a 1 MB message."""
    return text if len(text) <= most else text[:most] + "\N{HORIZONTAL ELLIPSIS}"


class Pattern(Protocol):
    def search(self, text: str) -> object | None: ...


def check_regex(regex: str) -> Pattern:
    """A job-list regex, compiled by RE2 (as AIStore's Go regexp): matching takes time linear
    in the text, so no regex can hold the node (Python's `re` backtracks: `(a+)+$` against a
    long description never ends)."""
    if len(regex) > MAX_REGEX:
        raise BadRequest(f"regex is too long: {len(regex)} characters (at most {MAX_REGEX})")
    try:
        pattern: Pattern = re2.compile(regex)
    except (re2.error, UnicodeEncodeError) as exc:  # RE2 reads UTF-8: a lone surrogate is not
        raise BadRequest(f"invalid regex {regex!r}: {exc}") from exc
    return pattern
