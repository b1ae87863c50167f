"""The ``kit`` command: click only. Each module is one command group; a command parses its
arguments, calls the library and chooses the output, nothing more.

Runs on login nodes, so start-up stays light: nothing here imports torch or transformers,
and each command imports what it needs inside its body.
"""

from __future__ import annotations

import sys

import click

from kit import __version__
from kit.cli import client, finetune, images, jobs, models, plan, rag, service, sites
from kit.cli.eval import eval_group
from kit.errors import KitError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kit")
def cli():
    """Right-sized, reproducible LLM jobs on Slurm GPU clusters."""


for group in (sites.sites, models.models, plan.plan, finetune.finetune, images.images, eval_group, rag.rag,
              service.service):
    cli.add_command(group)
for command in jobs.COMMANDS + client.COMMANDS:
    cli.add_command(command)
eval_group.add_command(rag.retrieval_cmd)  # `kit eval retrieval`: it scores a RAG store's retrieval


def main(argv=None) -> None:
    """Every failure is one line on stderr and a non-zero exit; never a traceback."""
    try:
        cli.main(args=argv, prog_name="kit", standalone_mode=False)
    except KitError as e:
        click.echo(f"kit: error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"kit: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("kit: aborted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as e:  # a bug in kit: still one line, with a way to see the traceback
        import os

        if os.environ.get("KIT_DEBUG"):
            raise
        click.echo(f"kit: error: internal error: {type(e).__name__}: {e} (set KIT_DEBUG=1 for the traceback)", err=True)
        sys.exit(70)
    sys.exit(0)
