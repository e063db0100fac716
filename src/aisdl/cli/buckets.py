"""Bucket and object commands: `ais create`, `ais bucket create|rm|props`, `ais ls`,
`ais get`, `ais put`, `ais object cp`."""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from aisdl.cli.context import CliContext
from aisdl.cli.params import UNITS_SHOWN, units_option
from aisdl.models import SCHEME_PROVIDER, Bucket, check_bucket_name
from aisdl.units import format_size

FLAG_CACHED = 64  # AIS's apc.EntryIsCached in a listed entry's flags

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9]*)://(.*)$")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def parse_uri(text: str) -> tuple[Bucket, str]:
    """`ais://b/dir/obj` → (ais bucket `b`, `dir/obj`); a bare `b` or `b/obj` means ais://."""
    m = _URI.match(text.strip())
    scheme, rest = (m.group(1).lower(), m.group(2)) if m else ("ais", text.strip())
    if scheme not in SCHEME_PROVIDER:
        raise click.UsageError(f"invalid bucket {text!r}: unknown scheme {scheme!r}"
                               f" (expected one of {', '.join(sorted(SCHEME_PROVIDER))})")
    name, _, obj = rest.partition("/")
    if not name:
        raise click.UsageError(f"invalid bucket {text!r}: missing bucket name")
    return Bucket(SCHEME_PROVIDER[scheme], check_bucket_name(name)), obj


def parse_bucket(text: str) -> Bucket:
    bck, obj = parse_uri(text)
    if obj.strip("/"):
        raise click.UsageError(f"expected a bucket, got an object name: {text!r}")
    return bck


# -- buckets -------------------------------------------------------------------------------------
@click.command("create")
@click.argument("buckets", nargs=-1, required=True)
@click.pass_obj
def create(obj: CliContext, buckets: tuple[str, ...]) -> None:
    """Create ais buckets (BUCKET is `name` or `ais://name`)."""
    parsed = [(text.strip(), parse_bucket(text)) for text in buckets]
    for text, bck in parsed:
        obj.client.create_bucket(bck)
        click.echo(f'"{text}" bucket created')


@click.command("rm")
@click.argument("buckets", nargs=-1, required=True)
@click.pass_obj
def remove(obj: CliContext, buckets: tuple[str, ...]) -> None:
    """Destroy buckets and everything stored in them."""
    for bck in [parse_bucket(text) for text in buckets]:
        obj.client.destroy_bucket(bck)
        click.echo(f'"{bck.cname}" bucket destroyed')


@click.command("ls")
@click.argument("bucket", required=False)
@click.option("--prefix", default="", help="List only objects whose names start with PREFIX.")
@click.option("--no-headers", "-H", is_flag=True, help="Print no table header.")
@click.option("--cached", is_flag=True, help="Only objects stored in this node.")
@click.option("--json", "-j", "as_json", is_flag=True,
              help="Print the buckets or objects as a JSON array (sizes in bytes).")
@units_option(UNITS_SHOWN)
@click.pass_obj
def ls(obj: CliContext, bucket: str | None, prefix: str, no_headers: bool, cached: bool,
       as_json: bool, units: str) -> None:
    """List buckets, or the objects of BUCKET (`ais://b`, `ais://b/prefix`)."""
    if bucket is None:
        if as_json:
            _echo_json_array({"name": b.name, "provider": b.provider}
                             for b in obj.client.list_buckets())
            return
        _list_buckets(obj, no_headers)
        return
    bck, path_prefix = parse_uri(bucket)
    prefix = path_prefix + prefix
    entries = obj.client.list_objects(bck, prefix=prefix, cached=cached)
    if as_json:
        _echo_json_array(_object_json(e) for e in entries)
        return
    columns = _columns(obj, bck, cached)
    shown = 0
    for entry in entries:
        if shown == 0 and not no_headers:
            click.echo("\t".join(columns))
        click.echo("\t".join(_cell(entry, c, units) for c in columns))
        shown += 1
    if shown == 0 and not no_headers:
        where = f"{bck.cname}/{prefix}" if prefix else bck.cname
        click.echo(f"No objects in {where}")


def _columns(obj: CliContext, bck: Bucket, cached: bool) -> tuple[str, ...]:
    """The document's header (`Name Size Version`). ais buckets show our versions; a cloud
    bucket shows what the cloud has (so its listing and the cached listing of a bucket backed
    by it compare equal); a backed bucket listed in full also says which objects are here."""
    if bck.is_remote:
        return ("Name", "Size")
    backend = obj.client.bucket_props(bck).get("backend_bck") or {}
    if not backend.get("name"):
        return ("Name", "Size", "Version")
    return ("Name", "Size") if cached else ("Name", "Size", "Cached")


def _cell(entry: dict[str, Any], column: str, units: str) -> str:
    if column == "Name":
        return str(entry["n"])
    if column == "Size":
        return format_size(entry.get("s", 0), units)
    if column == "Version":
        return str(entry.get("v", ""))
    return "yes" if int(entry.get("f", 0)) & FLAG_CACHED else "no"


def _object_json(entry: dict[str, Any]) -> dict[str, Any]:
    """A listed object for scripts (README.md, "Output for scripts"): every field always."""
    return {"name": str(entry["n"]), "size": int(entry.get("s", 0)),
            "version": str(entry.get("v", "")),
            "cached": bool(int(entry.get("f", 0)) & FLAG_CACHED)}


def _echo_json_array(items: Iterator[dict[str, Any]]) -> None:
    """A JSON array written as the items come (a listing is paged, never held whole), in the
    4-space layout of AIS's CLI."""
    first = next(items, None)  # the first page answers (or fails) before anything is printed
    if first is None:
        click.echo("[]")
        return
    click.echo("[", nl=False)
    sep = "\n"
    for item in itertools.chain([first], items):
        click.echo(sep + textwrap.indent(json.dumps(item, indent=4), "    "), nl=False)
        sep = ",\n"
    click.echo("\n]")


def _list_buckets(obj: CliContext, no_headers: bool) -> None:
    buckets = obj.client.list_buckets()
    if not buckets:
        if not no_headers:
            click.echo("No buckets in the cluster")
        return
    if not no_headers:
        click.echo("Name")
    for bck in buckets:
        click.echo(bck.cname)


# -- bucket props --------------------------------------------------------------------------------
@click.group("props")
def props() -> None:
    """Show or change bucket properties."""


@props.command("show")
@click.argument("bucket")
@click.pass_obj
def props_show(obj: CliContext, bucket: str) -> None:
    """Print the bucket's properties as JSON."""
    click.echo(json.dumps(obj.client.bucket_props(parse_bucket(bucket)), indent=2))


@props.command("set")
@click.argument("bucket")
@click.argument("settings", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.pass_obj
def props_set(obj: CliContext, bucket: str, settings: tuple[str, ...]) -> None:
    """Change properties, e.g. `backend_bck=gcp://name` (`none` detaches) or
    `versioning.enabled=false`."""
    bck = parse_bucket(bucket)
    client = obj.client
    old = client.bucket_props(bck)
    partial: dict[str, Any] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise click.UsageError(f"invalid setting {setting!r} (expected KEY=VALUE)")
        _merge(partial, _setting(old, key.strip(), value.strip()))
    if _flatten(_applied(old, partial)) == _flatten(old):
        click.echo("No changes: the bucket already has these properties")
        return
    client.set_bucket_props(bck, partial)
    new = client.bucket_props(bck)
    click.echo("Bucket props successfully updated")
    before, after = _flatten(old), _flatten(new)
    for key in sorted(after):
        if after[key] != before.get(key):
            click.echo(f'"{key}" set to:"{after[key]}" (was:"{before.get(key, "")}")')


def _setting(current: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    """One KEY=VALUE as a partial props object, typed like the current value."""
    if key == "backend_bck":
        return {"backend_bck": _backend(value)}
    path = key.split(".")
    node: Any = current
    for part in path:
        if not isinstance(node, dict) or part not in node:
            raise click.UsageError(f"unknown bucket property {key!r}")
        node = node[part]
    if isinstance(node, dict):
        raise click.UsageError(f"{key!r} is a section; set one of its fields, e.g."
                               f" {key}.{next(iter(node), 'name')}=...")
    typed = _typed(key, value, node)
    out: dict[str, Any] = {path[-1]: typed}
    for part in reversed(path[:-1]):
        out = {part: out}
    return out


def _typed(key: str, value: str, like: Any) -> Any:
    if isinstance(like, bool):
        if value.lower() not in _TRUE + _FALSE:
            raise click.UsageError(f"{key} must be true or false, got {value!r}")
        return value.lower() in _TRUE
    if isinstance(like, int):
        try:
            return int(value)
        except ValueError:
            raise click.UsageError(f"{key} must be an integer, got {value!r}") from None
    return value


def _backend(value: str) -> dict[str, Any]:
    if value.lower() in ("", "none"):
        return {"name": "", "provider": "", "namespace": {"uuid": "", "name": ""}}
    bck = parse_bucket(value)
    return {"name": bck.name, "provider": bck.provider, "namespace": {"uuid": "", "name": ""}}


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _applied(old: dict[str, Any], partial: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(old)
    _merge(out, partial)
    return out


def _flatten(props: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"a": {"b": true}}` → `{"a.b": "true"}`, values printed as AIS prints them."""
    out: dict[str, str] = {}
    for key, value in props.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, bool) else str(value)
    return out


# -- objects -------------------------------------------------------------------------------------
@click.command("get")
@click.argument("source", metavar="BUCKET/OBJECT")
@click.argument("dest", required=False, metavar="[FILE|-]")
@units_option(UNITS_SHOWN)
@click.pass_obj
def get(obj: CliContext, source: str, dest: str | None, units: str) -> None:
    """Download an object to FILE (default: its base name; `-` writes to stdout)."""
    bck, name = parse_uri(source)
    if not name:
        raise click.UsageError(f"{source!r} names no object (expected e.g. ais://b/obj)")
    resp = obj.client.get_object(bck, name)
    if dest == "-":
        for chunk in resp.iter_content(1 << 20):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return
    path = Path(dest or name.rsplit("/", 1)[-1])
    if path.is_dir():
        path = path / name.rsplit("/", 1)[-1]
    tmp = path.with_name(f".{path.name}.part")
    size = 0
    try:
        with open(tmp, "wb") as f:
            for chunk in resp.iter_content(1 << 20):
                f.write(chunk)
                size += len(chunk)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    click.echo(f'GET "{name}" from {bck.cname} as "{path}" [{format_size(size, units)}]')


@click.command("put")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dest", metavar="BUCKET[/OBJECT]")
@click.pass_obj
def put(obj: CliContext, file: Path, dest: str) -> None:
    """Upload FILE as an object (`ais://b/` or `ais://b` names it after the file)."""
    bck, name = parse_uri(dest)
    if not name or name.endswith("/"):
        name += file.name
    with open(file, "rb") as f:
        obj.client.put_object(bck, name, f)
    click.echo(f'PUT "{file}" => {bck.cname}/{name}')


@click.command("cp")
@click.argument("source", metavar="SOURCE")
@click.argument("destination", metavar="DESTINATION")
@click.pass_obj
def copy_object(obj: CliContext, source: str, destination: str) -> None:
    """Copy the object SOURCE (`ais://b/obj`) to DESTINATION: `ais://b2/name`, or a bucket
    (`ais://b2`: same name; `ais://b2/dir/`: under dir/). The copy is made on the node."""
    bck, name = parse_uri(source)
    if not name:
        raise click.UsageError(f"{source!r} names no object (expected e.g. ais://b/obj)")
    to_bck, to_name = parse_uri(destination)
    if not to_name:
        to_name = name
    elif to_name.endswith("/"):
        to_name += name.rsplit("/", 1)[-1]
    obj.client.copy_object(bck, name, to_bck, to_name)
    click.echo(f"COPY {bck.cname}/{name} => {to_bck.cname}/{to_name}")


@click.group("object")
def object_group() -> None:
    """Copy objects."""


object_group.add_command(copy_object)


def register(cli: click.Group, bucket: click.Group) -> None:
    for command in (create, ls, get, put, object_group):
        cli.add_command(command)
    bucket.add_command(create)
    bucket.add_command(remove)
    bucket.add_command(ls)
    bucket.add_command(props)
