"""Options several commands share, declared once, and the JSON printer."""

from __future__ import annotations

import json

import click

SITE_HELP = "site name or site YAML file (default: $KIT_SITE)"
PLAN_SITE_HELP = "site name or YAML file (default: $KIT_SITE)"
RECORD_SITE_HELP = "site whose state dir holds the record"
ACCOUNT_PATHS_HELP = "fills {account} in the site's image directory"


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def site_option(help: str = SITE_HELP):
    """--site NAME|FILE; ``help`` says what the site is for in this command."""
    return click.option("--site", "site", metavar="NAME|FILE", help=help)


def stacked(*options):
    """Several options as one decorator, in the order given (as they appear in --help)."""
    def decorate(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return decorate


def json_option(help: str = "print JSON"):
    return click.option("--json", "as_json", is_flag=True, help=help)


def account_option(help: str = "Slurm account (default: the site's, or $KIT_ACCOUNT); "
                               "also picks the account's shared model cache"):
    return click.option("--account", help=help)


def engine_option():
    from kit import engines

    return click.option("--engine", type=click.Choice(engines.names()), default="tgi", show_default=True)


def placement_options(f):
    return stacked(
        site_option(PLAN_SITE_HELP),
        click.option("--partition", help="GPU partition (default: the site's defaults.gpu_partition)"),
        click.option("--gpu", "gpu", metavar="TIER", help="GPU tier as the site file names it (a100-40, a100-80, h100, l40s)"),
        click.option("--gpus", type=int, help="exact number of GPUs (tensor-parallel size when serving)"),
        json_option("print one JSON object"),
    )(f)


def typical_default() -> str:
    """memory.yaml's default KV target in words: "8 typical requests of 1152 tokens"."""
    from kit.plan.memory import constants

    c = constants()["serve"]
    typical = c["typical_request"]["input_tokens"] + c["typical_request"]["output_tokens"]
    return f"{c['default_typical_requests']} typical requests of {typical} tokens"


def serve_options(f):
    from kit.plan import quantize_choices

    return stacked(
        engine_option(),
        click.option("--dtype", default="auto", show_default=True, help="auto, bfloat16 or float16"),
        click.option("--quantize", type=click.Choice(quantize_choices()), help="default: none, or the checkpoint's own"),
        click.option("--max-input-tokens", type=int, help="longest prompt (default: max-total minus up to 1024)"),
        click.option("--max-total-tokens", type=int, help="prompt + generated tokens per request (default: min(context, 8192))"),
        click.option("--concurrency", type=int, help="guarantee N full-length requests at once, and let the engine "
                     f"run N (default: room for one and for {typical_default()})"),
    )(f)


def job_argument(f):
    """JOB (a Slurm job id or kit job name), and the --site whose state dir holds its record."""
    f = site_option(RECORD_SITE_HELP)(f)
    return click.argument("job", metavar="JOB")(f)
