"""`ais`: the command line. Commands talk to a node only through `aisdl.client`."""

from __future__ import annotations

import sys

import click

from aisdl.cli import buckets, download, node_cmds
from aisdl.cli.context import CliContext
from aisdl.errors import AisdlError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """aisdl: download massive numbers of files into buckets, durably.

    A node keeps buckets and runs download jobs; `ais` talks to the node at $AIS_ENDPOINT
    (default http://127.0.0.1:8080) and starts one in the background when none answers there.
    """
    ctx.obj = CliContext()


@cli.group()
def bucket() -> None:
    """Create, list and configure buckets."""


@cli.group()
def job() -> None:
    """Start, show, wait for, stop and remove jobs."""


buckets.register(cli, bucket)
download.register(cli, job)
node_cmds.register(cli)


def main() -> None:
    try:
        cli.main(standalone_mode=False, prog_name="ais")
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        # One line, exit 1, for every bad input; `--help` has the usage.
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(1)
    except AisdlError as exc:
        click.echo(f"Error: {exc.message}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(0)


if __name__ == "__main__":
    main()
