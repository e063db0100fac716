"""Commands on many objects at once, as AIS's CLI has them: `ais object rm`, `ais evict` and
`ais prefetch` (also `ais object evict|prefetch`), each on BUCKET[/OBJECT_NAME_or_TEMPLATE] or
with `--list`, `--template` or `--prefix`.

Removals and evictions go on in the node's background; a prefetch is a download job, which
`--wait` waits for and `ais show job download` shows."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import click

from aisdl.cli import jobview
from aisdl.cli.buckets import parse_uri
from aisdl.cli.context import CliContext
from aisdl.cli.download import JobFailed
from aisdl.jobs.template import has_template
from aisdl.models import Bucket

WAIT_INTERVAL = 0.5  # seconds between two looks at a prefetch job


@dataclass(frozen=True)
class Selected:
    """What a command line selects in one bucket: names, a template (a prefix when it has no
    range; empty: every object), or one object."""

    bck: Bucket
    names: tuple[str, ...] = ()
    template: str | None = None
    single: str = ""

    def describe(self, verb: str) -> str:
        if self.names:
            shown = " ".join(self.names[:4]) + (" ..." if len(self.names) > 4 else "")
            return f"[{shown}] {verb} from {self.bck.cname}"
        if not self.template:
            return f"{verb} entire bucket {self.bck.cname}"
        return f"{verb} {self.template!r} from {self.bck.cname}"


def _select(uri: str, names: str | None, template: str | None, prefix: str | None) -> Selected:
    """AIS's rules: `--list` and `--template`/`--prefix` exclude each other and an object
    name in the URI; a name with a range is a template, one that ends with `/` a prefix."""
    bck, name = parse_uri(uri)
    if prefix is not None and template is not None:
        raise click.UsageError("--prefix and --template are mutually exclusive")
    template = prefix if prefix is not None else template
    if names is not None and template is not None:
        raise click.UsageError("--list and --template are mutually exclusive")
    if name and (names is not None or template is not None):
        raise click.UsageError(f"object name or template ({name}) cannot be used together"
                               " with --list and --template (use one or the other)")
    if names is not None:
        listed = tuple(n.strip() for n in names.split(",") if n.strip())
        if not listed:
            raise click.UsageError("--list names no object")
        return Selected(bck, names=listed)
    if template is not None:
        return Selected(bck, template=template)
    if not name or has_template(name) or name.endswith("/"):
        return Selected(bck, template=name)  # (no name: every object)
    return Selected(bck, single=name)


def _dry_run(sel: Selected, verb: str) -> None:
    if sel.names or sel.single:
        for name in sel.names or (sel.single,):
            click.echo(f"[DRY RUN] {verb.upper()} {sel.bck.cname}/{name}")
    elif sel.template:
        click.echo(f"[DRY RUN] {verb.upper()} objects matching {sel.template!r} from"
                   f" {sel.bck.cname}")
    else:
        click.echo(f"[DRY RUN] {verb.upper()} all objects from {sel.bck.cname}")


def _start(start: Callable[..., str], sel: Selected) -> str:
    if sel.names or sel.single:
        return start(sel.bck, names=list(sel.names or (sel.single,)))
    return start(sel.bck, template=sel.template or "")


_list_opt = click.option("--list", "names", metavar="NAMES",
                         help="Comma-separated list of object names, e.g. --list 'o1,o2,o3'.")
_template_opt = click.option(
    "--template", default=None,
    help="Template of object names: a prefix (possibly empty) with zero or more ranges, e.g."
         " 'shard-{0000..9999}.tar'; an empty template matches every object.")
_prefix_opt = click.option("--prefix", default=None,
                           help="Select the objects whose names start with PREFIX.")
_dry_opt = click.option("--dry-run", is_flag=True,
                        help="Show what would be done, without doing it.")


@click.command("rm")
@click.argument("uris", nargs=-1, required=True, metavar="BUCKET[/OBJECT_NAME_or_TEMPLATE] ...")
@_list_opt
@_template_opt
@_prefix_opt
@click.option("--all", "everything", is_flag=True,
              help="Remove all objects of the bucket (use with care: it cannot be undone).")
@_dry_opt
@click.pass_obj
def rm(obj: CliContext, uris: tuple[str, ...], names: str | None, template: str | None,
       prefix: str | None, everything: bool, dry_run: bool) -> None:
    """Remove an object, or the objects selected by a list, a template or a prefix.

    \b
    e.g.:
      ais object rm ais://nnn/obj                       remove one object
      ais object rm ais://nnn --list 'a,b,c'            remove the listed objects
      ais object rm "ais://nnn/shard-{0000..9999}.tar"   remove the matching range
      ais object rm ais://nnn/images/                   remove all objects under images/
      ais object rm ais://nnn --all                     remove all objects of the bucket"""
    for uri in uris:
        sel = _select(uri, names, "" if everything else template, prefix)
        if not (sel.names or sel.single or sel.template or everything):
            raise click.UsageError("to select objects to be removed use one of: --list,"
                                   " --template, --prefix or --all")
        if dry_run:
            _dry_run(sel, "rm")
        elif sel.single:
            obj.client.delete_object(sel.bck, sel.single)
            click.echo(f'deleted "{sel.single}" from {sel.bck.cname}')
        else:
            op = _start(obj.client.delete_objects, sel)
            click.echo(f"delete-objects[{op}]: {sel.describe('rm')}")


@click.command("evict")
@click.argument("uris", nargs=-1, required=True, metavar="BUCKET[/OBJECT_NAME_or_TEMPLATE] ...")
@_list_opt
@_template_opt
@_prefix_opt
@_dry_opt
@click.pass_obj
def evict(obj: CliContext, uris: tuple[str, ...], names: str | None, template: str | None,
          prefix: str | None, dry_run: bool) -> None:
    """Drop the copies stored in the node of a remote bucket's objects (the remote keeps them).

    \b
    e.g.:
      ais evict gs://abc                                 every stored object of gs://abc
      ais evict gs://abc --prefix images/                those under images/
      ais evict gs://abc --template "shard-{0000..9999}.tar"   the matching range
      ais evict ais://lpr --list 'a,b'                  an ais bucket with a remote backend"""
    for uri in uris:
        sel = _select(uri, names, template, prefix)
        if dry_run:
            _dry_run(sel, "evict")
            continue
        op = _start(obj.client.evict_objects, sel)
        click.echo(f"evict-objects[{op}]: {sel.describe('evict')}")


@click.command("prefetch")
@click.argument("uris", nargs=-1, required=True, metavar="BUCKET[/OBJECT_NAME_or_TEMPLATE] ...")
@_list_opt
@_template_opt
@_prefix_opt
@click.option("--num-workers", type=click.IntRange(min=0), default=0,
              help="Concurrent transfers of the job (default: the node's).")
@click.option("--wait", is_flag=True, help="Wait for the job to finish.")
@click.option("--timeout", type=float, default=None, metavar="SECONDS",
              help="With --wait: stop waiting after this long.")
@_dry_opt
@click.pass_obj
def prefetch(obj: CliContext, uris: tuple[str, ...], names: str | None, template: str | None,
             prefix: str | None, num_workers: int, wait: bool, timeout: float | None,
             dry_run: bool) -> None:
    """Download a remote bucket's objects into the node: a download job from the bucket's
    backend, shown by `ais show job download`.

    \b
    e.g.:
      ais prefetch gs://abc                              every object of gs://abc
      ais prefetch gs://abc --prefix images/             those under images/
      ais prefetch "gs://abc/shard-{0000..9999}.tar"      the matching range
      ais prefetch ais://lpr --list 'a,b' --wait         an ais bucket with a remote backend"""
    for uri in uris:
        sel = _select(uri, names, template, prefix)
        if dry_run:
            _dry_run(sel, "prefetch")
            continue

        def start(bck: Bucket, names: list[str] | None = None, template: str = "") -> str:
            return obj.client.prefetch_objects(bck, names, template, workers=num_workers)

        job = _start(start, sel)
        click.echo(f"prefetch-objects[{job}]: {sel.describe('prefetch')}."
                   f" Run `ais show job download {job}` to see its progress")
        if wait:
            _wait(obj, job, timeout)


def _wait(obj: CliContext, job: str, timeout: float | None) -> None:
    """Until the job ends: exit 1 (as `ais wait download`) when it ended with errors."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = obj.client.download_status(job)
        if jobview.is_finished(status):
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise click.ClickException(f"timed out waiting for download job {job}")
        time.sleep(WAIT_INTERVAL)
    errors, aborted = status.get("error_cnt", 0), status.get("aborted", False)
    click.echo(f"Done: {status.get('finished_cnt', 0)} objects"
               f" ({status.get('skipped_cnt', 0)} already up to date), {errors} errors"
               + (", aborted" if aborted else ""))
    if errors or aborted:
        for err in status.get("download_errors", [])[:5]:
            click.echo(f"  {err['name']}: {err['error']}", err=True)
        raise JobFailed(job)


def register(cli: click.Group) -> None:
    """`ais evict`, `ais prefetch`, and rm/evict/prefetch under `ais object` (made here
    unless another module made it)."""
    group = cli.commands.get("object")
    if not isinstance(group, click.Group):
        group = click.Group("object", help="Commands on objects.")
        cli.add_command(group)
    for command in (rm, evict, prefetch):
        group.add_command(command)
    cli.add_command(evict)
    cli.add_command(prefetch)
