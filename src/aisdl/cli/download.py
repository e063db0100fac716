"""`ais start download`, `ais show job download`, `ais wait`, `ais stop`, `ais job rm download`."""

from __future__ import annotations

import json
import posixpath
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from aisdl.cli import jobview
from aisdl.cli.context import CliContext
from aisdl.cli.params import (
    DURATION,
    SIZE,
    UNITS_SHOWN,
    Dest,
    Source,
    parse_dest,
    parse_source,
    read_object_list,
    units_option,
)
from aisdl.client import Client
from aisdl.errors import AisdlError, BadRequest, NotFound
from aisdl.jobs.template import has_template

RANGE_HINT = ('For range download, enclose source in quotation marks, e.g.:'
              ' "gs://imagenet/train-{00..99}.tgz"')


class JobFailed(Exception):
    """The job waited for or shown ended with errors or was aborted: exit code 1, its summary
    already shown. Not an AisdlError: the command itself did what it was asked."""


class WatchInterrupted(Exception):
    """Ctrl-C while watching a job: the watching stops, the job goes on (exit code 130)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


@contextmanager
def _watching(job_id: str) -> Iterator[None]:
    """Ctrl-C stops only the watching; the job runs in the node, so say how to stop that."""
    try:
        yield
    except KeyboardInterrupt:
        raise WatchInterrupted(job_id) from None


class KindAndId(click.Command):
    """`ais <command> [download] JOB_ID`: the kind word may be left out (the document's short
    forms). Given, it is part of the command's name in its usage line and help."""

    def __init__(self, *args: Any, job_id: str = "JOB_ID", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.job_id_metavar = job_id

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] == "download":
            ctx.info_name = f"{ctx.info_name} download"
            args = args[1:]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        named = (ctx.info_name or "").endswith(" download")
        return [self.options_metavar or "",
                ("" if named else "[download] ") + self.job_id_metavar]


def _kind_and_id(args: tuple[str, ...], command: str, required: bool = True) -> str | None:
    """`download ID` or just `ID` (the short forms of the user's document)."""
    rest = list(args)
    if rest and rest[0] == "download":
        rest.pop(0)
    if len(rest) > 1:
        raise click.UsageError(f"too many arguments for `ais {command}`: {' '.join(args)}")
    if not rest and required:
        raise click.UsageError('missing "JOB_ID" argument')
    return rest[0] if rest else None


# -- start --------------------------------------------------------------------------------------
def build_request(source: Source, dest: Dest, object_list: str | None, sync: bool,
                  client: Client, latest: bool = False) -> dict[str, Any]:
    """The job the SOURCE/DEST pair describes: multi (object list), range (template), backend
    (a cloud bucket or prefix into a bucket backed by it), or single."""
    bucket = dest.bucket.to_json()
    if source.bucket is not None and not object_list and not has_template(source.link):
        if _is_backed_by(client, dest, source):
            return {"type": "backend", "bucket": bucket, "prefix": source.prefix,
                    "synchronize": sync, "latest": latest}
        if not source.prefix:
            raise BadRequest(
                f"cannot download the whole bucket {source.bucket.cname} into {dest.bucket.cname}:"
                " it is only possible into a bucket whose backend is that bucket; run `ais bucket"
                f" props set {dest.bucket.cname} backend_bck={source.bucket.cname}` first")
        click.echo(f"Warning: {dest.bucket.cname} does not have Cloud bucket"
                   f" {source.bucket.cname} as its *backend* - proceeding to download anyway.",
                   err=True)
    if sync:
        raise BadRequest("--sync needs a cloud bucket (or prefix) as SOURCE and a DESTINATION"
                         f" whose backend_bck is that bucket, e.g. `ais bucket props set"
                         f" {dest.bucket.cname} backend_bck=gcp://BUCKET`")
    if latest:
        # A link, a range or a list is checked against its source on every download already
        # (a conditional GET); only a bucket's listing can vouch for an object without asking.
        raise BadRequest("--latest needs a cloud bucket (or prefix) as SOURCE and a DESTINATION"
                         " whose backend_bck is that bucket: links, ranges and object lists are"
                         " checked against their source on every download already")
    if object_list:
        entries = read_object_list(object_list)
        base = source.link.rstrip("/")
        objects = {posixpath.join(dest.path, posixpath.basename(e.rstrip("/"))): f"{base}/{e}"
                   for e in entries}
        return {"type": "multi", "bucket": bucket, "objects": objects}
    if has_template(source.link):
        return {"type": "range", "bucket": bucket, "template": source.link, "subdir": dest.path}
    name = dest.path
    if dest.has_trailing_slash:
        name = posixpath.join(dest.path, posixpath.basename(source.link.split("?")[0]))
    return {"type": "single", "bucket": bucket, "link": source.link, "object_name": name}


def _hf_destination(args: tuple[str, ...]) -> str:
    if not args:
        raise click.UsageError('missing "destination" argument')
    if len(args) > 1:
        raise click.UsageError("when using Hugging Face flags (--hf-model, --hf-dataset), provide"
                               f" only the destination argument - got {len(args)} arguments")
    return args[0]


def hf_request(dest: Dest, model: str, dataset: str, file: str, revision: str, token: str,
               object_list: str | None, sync: bool) -> dict[str, Any]:
    """A Hugging Face repository (or one file of it) into DESTINATION's path. The token is the
    user's (as huggingface_hub finds it) unless given; the node uses its own when none is."""
    if model and dataset:
        raise BadRequest("--hf-model and --hf-dataset are mutually exclusive")
    if object_list or sync:
        raise BadRequest("--object-list and --sync do not apply to a Hugging Face download")
    from aisdl.sources.hf import hub_token

    body: dict[str, Any] = {"type": "hf", "bucket": dest.bucket.to_json(),
                            "subdir": dest.path, "hf_revision": revision}
    body["hf_model" if model else "hf_dataset"] = model or dataset
    if file:
        body["hf_file"] = file
    if token := token or hub_token():
        body["hf_auth"] = token
    return body


def _is_backed_by(client: Client, dest: Dest, source: Source) -> bool:
    """Does DEST list SOURCE's bucket: it is that bucket, or has it as `backend_bck`?"""
    assert source.bucket is not None
    if dest.bucket == source.bucket:
        return True
    if dest.bucket.is_remote or not client.bucket_exists(dest.bucket):
        return False
    backend = client.bucket_props(dest.bucket).get("backend_bck") or {}
    return (backend.get("provider"), backend.get("name")) == (source.bucket.provider,
                                                              source.bucket.name)


@click.command("download")
@click.argument("args", nargs=-1, metavar="SOURCE DESTINATION")
@click.option("--description", "--desc", default="", help="Description of the download job.")
@click.option("--timeout", type=DURATION, default=None,
              help="Timeout for a request to the external resource (e.g. 30s, 2m).")
@click.option("--download-timeout", type=DURATION, default=None,
              help="The most one file may take, every retry included (e.g. 10m); a file not"
              " done by then is that file's error.")
@click.option("--latest", is_flag=True, help="Ask the source for the version of each object"
              " already downloaded and download it again if it changed; removes nothing"
              " (needs a remote bucket as SOURCE).")
@click.option("--sync", is_flag=True, help="Also remove cached objects that are gone from the"
              " remote bucket (needs a remote bucket as SOURCE).")
@click.option("--max-conns", "--conns", "max_conns", type=click.IntRange(min=0), default=0,
              help="Max concurrent connections of this job (0: the node's limit).")
@click.option("--limit-bph", type=SIZE, default=None,
              help="Max bytes downloaded per hour, e.g. 1GiB, 500MB (default: unlimited).")
@click.option("--blob-threshold", type=SIZE, default=None,
              help="Fetch objects of at least this size (e.g. 100MiB) as ranged parts over"
              " several connections at once (default: one connection per object).")
@click.option("--blob-conns", type=click.IntRange(min=1, max=128), default=None,
              help="Connections of one such object at most (default: 8; within --max-conns).")
@click.option("--object-list", "--from", "object_list", default=None,
              help="Path to a file with a JSON array of object names to download.")
@click.option("--progress", is_flag=True,
              help="Show progress bars and wait until all files are downloaded.")
@click.option("--progress-interval", type=DURATION, default=10.0, show_default="10s",
              help="Refresh interval of --progress (e.g. 500ms, 10s, 1m).")
@click.option("--wait", is_flag=True, help="Wait until all files are downloaded, then print a"
              " brief summary.")
@click.option("--hf-model", default="", help="Hugging Face model repository, e.g."
              " bert-base-uncased or openai/whisper-large-v2 (then DESTINATION is the only"
              " argument).")
@click.option("--hf-dataset", default="", help="Hugging Face dataset repository, e.g."
              " rajpurkar/squad.")
@click.option("--hf-file", default="", help="One file of the repository (default: all of them).")
@click.option("--hf-revision", default="main", show_default=True,
              help="Branch, tag or commit of the repository.")
@click.option("--hf-auth", default="", help="Hugging Face token for private and gated"
              " repositories (default: HF_TOKEN, else the token file huggingface_hub uses).")
@click.option("--json", "-j", "as_json", is_flag=True, help='Print {"id": JOB_ID} as JSON; with'
              " --wait or --progress the job's final status instead (bars go to stderr).")
@units_option("Units of sizes: how --limit-bph is read (without --units its suffix decides;"
              " iec reads 1GB as 1GiB, si refuses GiB, raw takes bytes only) and the progress"
              " bars show them (iec, the default: MiB; si: MB; raw: bytes).")
@click.pass_obj
def start_download(obj: CliContext, args: tuple[str, ...], description: str,
                   timeout: float | None, download_timeout: float | None, latest: bool,
                   sync: bool, max_conns: int, limit_bph: int | None,
                   blob_threshold: int | None, blob_conns: int | None,
                   object_list: str | None, progress: bool, progress_interval: float,
                   wait: bool, hf_model: str, hf_dataset: str, hf_file: str, hf_revision: str,
                   hf_auth: str, as_json: bool, units: str) -> None:
    """Download SOURCE (a link, a range template, an ais:// object) into DESTINATION (ais://b/...).

    \b
    Examples:
      ais start download http://example.com/file.iso ais://b/file.iso
      ais start download "https://example.com/shard-{000..140}.tar" ais://b/shards/
      ais start download https://example.com/data ais://b --object-list=names.json
      ais start download --hf-model openai/whisper-tiny ais://models/whisper/
    """
    if blob_conns is not None and not blob_threshold:
        raise BadRequest("--blob-conns takes effect only with --blob-threshold")
    client = obj.client
    if hf_model or hf_dataset:
        dest = parse_dest(_hf_destination(args))
        if latest:
            raise BadRequest("--latest applies to downloads from a cloud bucket (a Hugging Face"
                             " job is pinned to one commit, and a re-run skips unchanged files)")
        body = hf_request(dest, hf_model, hf_dataset, hf_file, hf_revision, hf_auth, object_list,
                          sync)
    else:
        if hf_file or hf_auth or hf_revision != "main":
            raise BadRequest("--hf-file, --hf-revision and --hf-auth need --hf-model or"
                             " --hf-dataset")
        if not args:
            raise click.UsageError('missing arguments "SOURCE DESTINATION"')
        if len(args) == 1:
            raise click.UsageError('missing "destination" argument')
        if len(args) > 2:
            raise click.UsageError(
                f"too many arguments - expected 2, got {len(args)}.\n{RANGE_HINT}")
        source, dest = parse_source(args[0]), parse_dest(args[1])
        body = build_request(source, dest, object_list, sync, client, latest)
    if download_timeout is not None:
        body["download_timeout"] = download_timeout  # seconds (a number)
    body.update(description=description, timeout=f"{timeout}s" if timeout else "",
                limits={"connections": max_conns, "bytes_per_hour": limit_bph or 0},
                progress_interval=f"{progress_interval}s")
    if blob_threshold:
        body["blob-threshold"] = blob_threshold
        if blob_conns is not None:
            body["blob-num-workers"] = blob_conns
    existed = client.bucket_exists(dest.bucket)
    job_id = client.start_download(body)
    if not existed:
        click.echo(f"Warning: destination bucket {dest.bucket.cname} doesn't exist. Bucket with"
                   " default properties will be created.", err=True)
    if as_json:
        if progress:
            _finish_json(_show_progress(obj, job_id, progress_interval, units, stderr=True))
        elif wait:
            _finish_json(_wait_for(client, job_id, refresh=1.0, timeout=None))
        else:
            _echo_json({"id": job_id})
        return
    click.echo(job_id)
    if progress:
        _finish(_show_progress(obj, job_id, progress_interval, units), bars=True)
    elif wait:
        _finish(_wait_for(client, job_id, refresh=1.0, timeout=None), bars=False)
    else:
        click.echo(f"Run `ais show job download {job_id}` to monitor the progress of downloading.")


def _show_progress(obj: CliContext, job_id: str, refresh: float, units: str,
                   stderr: bool = False) -> dict[str, Any]:
    from aisdl.cli.progress import show_progress  # rich loads only when bars are drawn

    with _watching(job_id):
        return show_progress(obj.client, job_id, refresh, units=units, no_color=obj.no_color,
                             stderr=stderr)


def _echo_json(value: Any) -> None:
    """JSON as AIS's CLI prints it (4-space indent); stdout carries nothing else."""
    click.echo(json.dumps(value, indent=4))


def _finish_json(st: dict[str, Any]) -> None:
    """A waited-for job's final status as JSON; exit code 1 when it has errors or was aborted."""
    _echo_json(jobview.status_json(st, verbose=True))
    if st["aborted"] or st["error_cnt"]:
        raise JobFailed()


def _finish(st: dict[str, Any], bars: bool) -> None:
    """The last word of a waited-for job; exit code 1 when it has errors or was aborted."""
    if st["aborted"]:
        click.echo("Download was aborted." if bars else jobview.summary_line(st))
    elif not st["error_cnt"]:
        click.echo("All files successfully downloaded." if bars else jobview.summary_line(st))
        return
    else:
        click.echo(jobview.summary_line(st))
        click.echo(f"To see detailed info run `ais show job download {st['id']} -v`")
    raise JobFailed()


def _wait_for(client: Client, job_id: str, refresh: float, timeout: float | None) -> dict[str, Any]:
    deadline = None if not timeout else time.monotonic() + timeout
    with _watching(job_id):
        while True:
            st = client.download_status(job_id, only_active=True)
            if jobview.is_finished(st):
                return client.download_status(job_id)
            if deadline is not None and time.monotonic() >= deadline:
                raise AisdlError(f"timed out waiting for download job {job_id}")
            left = refresh if deadline is None else deadline - time.monotonic()
            time.sleep(max(0.0, min(refresh, left)))


# -- show ---------------------------------------------------------------------------------------
@click.command("job", cls=KindAndId, job_id="[JOB_ID]")
@click.argument("args", nargs=-1)
@click.option("--regex", default="", help="Regex for the description of download jobs.")
@click.option("--progress", is_flag=True, help="Display progress bars.")
@click.option("--refresh", type=DURATION, default=1.0, show_default="1s",
              help="Refresh interval (e.g. 500ms, 1s).")
@click.option("--verbose", "-v", is_flag=True, help="Verbose output (files in flight, errors).")
@click.option("--all", "show_all", is_flag=True,
              help="Include finished jobs (they are always listed; kept for AIStore scripts).")
@click.option("--json", "-j", "as_json", is_flag=True, help="Print the jobs (or the job's status)"
              " as JSON; -v adds each job's errors and finished files.")
@click.option("--no-headers", "-H", is_flag=True, help="Omit the table header.")
@units_option(UNITS_SHOWN)
@click.pass_obj
def show_job(obj: CliContext, args: tuple[str, ...], regex: str, progress: bool,
             refresh: float, verbose: bool, show_all: bool, as_json: bool,
             no_headers: bool, units: str) -> None:
    """Show download jobs, or the status of one: `ais show job download [JOB_ID]`. With
    --refresh (and no --progress) the report repeats until the jobs finish (Ctrl-C stops).
    One job's exit code is that of `ais wait`: 1 when it ended with errors or was aborted."""
    job_id = _kind_and_id(args, "show job", required=False)
    client = obj.client
    if progress and job_id is not None:
        st = _show_progress(obj, job_id, refresh, units, stderr=as_json)
        if as_json:
            _echo_json(jobview.status_json(st, verbose))
            if st["aborted"] or st["error_cnt"]:
                raise JobFailed()
            return
        _finish(st, bars=True)
        return
    repeat = click.get_current_context().get_parameter_source("refresh") \
        == click.core.ParameterSource.COMMANDLINE
    if job_id is None:
        while _list_jobs(client, regex, as_json, no_headers, verbose) and repeat:
            time.sleep(refresh)
            click.echo()
        return
    with _watching(job_id):
        while True:
            if as_json:  # without -v, the node leaves out the lists of errors and done files
                st = client.download_status(job_id, only_active=not verbose)
                _echo_json(jobview.status_json(st, verbose))
            else:
                st = client.download_status(job_id)
                for line in jobview.status_lines(st, verbose, units):
                    click.echo(line)
            if jobview.is_finished(st) or not repeat:
                break
            time.sleep(refresh)
            click.echo()
    if jobview.is_finished(st) and (st["aborted"] or st["error_cnt"]):
        raise JobFailed()


def _list_jobs(client: Client, regex: str, as_json: bool, no_headers: bool,
               verbose: bool) -> bool:
    """Print the jobs; whether any of them is still running."""
    jobs = jobview.sort_jobs(client.list_downloads(regex=regex))
    running = any(not jobview.is_finished(j) for j in jobs)
    if as_json:
        _echo_json([_status_of(client, j) if verbose else jobview.job_json(j) for j in jobs])
        return running
    if not jobs:
        click.echo("No download jobs" + (f" matching {regex!r}" if regex else ""))
        return running
    if not no_headers:
        click.echo("JOB ID\t\t STATUS\t\t ERRORS\t DESCRIPTION")
    for j in jobs:
        click.echo(f"{j['id']}\t {jobview.job_status_word(j)}\t {j['error_cnt']}\t"
                   f" {j['description']}")
    return running


def _status_of(client: Client, job: dict[str, Any]) -> dict[str, Any]:
    """A listed job's full status; the job as listed when it was removed meanwhile."""
    try:
        return jobview.status_json(client.download_status(job["id"]), verbose=True)
    except NotFound:
        return jobview.status_json(job, verbose=True)


# -- wait, stop, rm -----------------------------------------------------------------------------
@click.command("wait", cls=KindAndId)
@click.argument("args", nargs=-1)
@click.option("--refresh", type=DURATION, default=1.0, show_default="1s",
              help="Refresh interval (e.g. 500ms, 1s).")
@click.option("--progress", is_flag=True, help="Display progress bars.")
@click.option("--timeout", type=DURATION, default=None, help="Give up waiting after this long.")
@click.option("--json", "-j", "as_json", is_flag=True,
              help="Print the job's final status as JSON (progress bars go to stderr).")
@units_option(UNITS_SHOWN)
@click.pass_obj
def wait_download(obj: CliContext, args: tuple[str, ...], refresh: float, progress: bool,
                  timeout: float | None, as_json: bool, units: str) -> None:
    """Wait for a download job to finish: `ais wait download JOB_ID` (or `ais wait JOB_ID`)."""
    job_id = _kind_and_id(args, "wait")
    assert job_id is not None
    client = obj.client
    if progress:
        st = _show_progress(obj, job_id, refresh, units, stderr=as_json)
        if as_json:
            _finish_json(st)
            return
        _finish(st, bars=True)
        return
    st = _wait_for(client, job_id, refresh, timeout)
    if as_json:
        _finish_json(st)
        return
    if st["aborted"] or st["error_cnt"]:
        _finish(st, bars=False)  # exit code 1 with the summary; none when all went well


@click.command("stop", cls=KindAndId)
@click.argument("args", nargs=-1)
@click.pass_obj
def stop_download(obj: CliContext, args: tuple[str, ...]) -> None:
    """Stop (abort) a download job: `ais stop download JOB_ID` (or `ais stop JOB_ID`)."""
    job_id = _kind_and_id(args, "stop")
    assert job_id is not None
    obj.client.abort_download(job_id)
    click.echo(f"Stopped download job {job_id}")


@click.command("rm", cls=KindAndId)
@click.argument("args", nargs=-1)
@click.option("--all", "rm_all", is_flag=True, help="Remove every finished download job.")
@click.pass_obj
def rm_download(obj: CliContext, args: tuple[str, ...], rm_all: bool) -> None:
    """Remove a finished download job from the list: `ais job rm download JOB_ID`."""
    job_id = _kind_and_id(args, "job rm", required=not rm_all)
    client = obj.client
    if job_id is not None:
        client.remove_download(job_id)
        click.echo(f'Removed finished download job "{job_id}"')
        return
    done = [j for j in client.list_downloads() if jobview.is_finished(j)]
    for j in done:
        client.remove_download(j["id"])
        click.echo(f'Removed download job "{j["id"]}"')
    if not done:
        click.echo("No finished download jobs, nothing to do")


def register(cli: click.Group, job: click.Group) -> None:
    start = click.Group("start", help="Start jobs: `ais start download SOURCE DEST`.")
    show = click.Group("show", help="Show jobs: `ais show job download [JOB_ID]`.")
    start.add_command(start_download)
    show.add_command(show_job)
    for group in (cli, job):
        group.add_command(wait_download)
        group.add_command(stop_download)
    cli.add_command(start)
    cli.add_command(show)
    cli.add_command(start_download, "download")
    job.add_command(start, "start")
    job.add_command(rm_download)
    job.add_command(show_job, "show")
