"""`ais`: the command line. Commands talk to a node only through `aisdl.client`."""

from __future__ import annotations

import sys

import click

from aisdl.cli import auth_cmds, buckets, download, node_cmds, objects_multi
from aisdl.cli.context import CliContext
from aisdl.cli.download import JobFailed, WatchInterrupted
from aisdl.errors import AisdlError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# The exit codes (README.md and `ais --help` state them): a script can tell a job that went
# wrong from a command that did not get to say.
EXIT_OK = 0
EXIT_JOB_FAILED = 1  # the job waited for or shown ended with errors, or was aborted
EXIT_COMMAND_FAILED = 2  # bad input or usage, unknown bucket or job, node unreachable
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="aisdl", prog_name="ais",
                      message="%(prog)s (aisdl) %(version)s")
@click.option("--no-color", is_flag=True, help="No colors or other text styles in the output"
              " (also when NO_COLOR is set). Output that is not a terminal never has them.")
@click.pass_context
def cli(ctx: click.Context, no_color: bool) -> None:
    """aisdl: download massive numbers of files into buckets, durably.

    A node keeps buckets and runs download jobs; `ais` talks to the node at $AIS_ENDPOINT
    (default http://127.0.0.1:8080) and starts one in the background when none answers there.

    \b
    Exit codes:
      0    done; for a job: it ended without errors (a plain `show`: or is still running)
      1    the job waited for or shown ended with errors, or was aborted
      2    the command itself failed: bad input or usage, unknown bucket or job, no node
      130  interrupted (Ctrl-C); a job being watched goes on in the background
    """
    ctx.obj = CliContext(no_color=no_color)


@cli.group()
def bucket() -> None:
    """Create, list and configure buckets."""


@cli.group()
def job() -> None:
    """Start, show, wait for, stop and remove jobs."""


buckets.register(cli, bucket)
download.register(cli, job)
node_cmds.register(cli)
objects_multi.register(cli)
auth_cmds.register(cli)


def main() -> None:
    try:
        cli.main(standalone_mode=False, prog_name="ais")
    except JobFailed:
        sys.exit(EXIT_JOB_FAILED)  # the job's summary is already printed
    except WatchInterrupted as exc:
        click.echo(f"Stopped watching: download job {exc.job_id} continues in the background;"
                   f" stop it with `ais stop download {exc.job_id}`", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except (click.exceptions.Abort, KeyboardInterrupt):
        sys.exit(EXIT_INTERRUPTED)  # click has ended the line the terminal's ^C began
    except click.ClickException as exc:
        # One line for every bad input; `--help` has the usage.
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(EXIT_COMMAND_FAILED)
    except AisdlError as exc:
        click.echo(f"Error: {exc.message}", err=True)
        sys.exit(EXIT_COMMAND_FAILED)
    except BrokenPipeError:
        sys.exit(EXIT_OK)
    sys.exit(EXIT_OK)


if __name__ == "__main__":
    main()
