"""`kit models`: show, list, pull."""

from __future__ import annotations

import click

from kit.cli.options import emit_json, engine_option, json_option, site_option
from kit.errors import KitError

MODEL_CACHE_ACCOUNT_HELP = "fills {account} in the site's model cache path"


@click.group()
def models():
    """Model metadata: exact parameter counts and architecture."""


@models.command("show")
@click.argument("model")
@site_option()
@click.option("--account", help=MODEL_CACHE_ACCOUNT_HELP)
@json_option()
def models_show(model, site, account, as_json):
    """MODEL is a Hub id, a local directory, or a model in the shared cache or the catalog."""
    from kit.cli import tables
    from kit.models.resolve import resolve
    from kit.sites import load_site_if_given

    info = resolve(model, load_site_if_given(site, account), account)
    if as_json:
        emit_json(info.as_dict())
    else:
        tables.model_detail(info)
    if info.layout is None:  # unsupported architecture: counted from safetensors, but cannot be planned
        raise KitError(info.warnings[0], exit_code=1)


@models.command("list")
@site_option()
@engine_option()
@json_option()
def models_list(site, engine, as_json):
    """The catalog; with --site, the smallest allocation that serves each model."""
    from kit.cli import tables
    from kit.plan.catalog import catalog_rows
    from kit.sites import load_site_if_given

    site_obj = load_site_if_given(site)
    rows = catalog_rows(site_obj, engine)
    if as_json:
        emit_json(rows)
    else:
        tables.models_table(rows, site_obj.name if site_obj else None, engine)


@models.command("pull")
@click.argument("model")
@click.option("--to", "to", type=click.Path(file_okay=False), help="cache directory (default: the site's model cache)")
@site_option()
@click.option("--account", help=MODEL_CACHE_ACCOUNT_HELP)
@click.option("--revision", default=None, help="branch, tag or commit (default: main)")
@click.option("--include", "allow", multiple=True, help="only files matching this glob (repeatable)")
def models_pull(model, to, site, account, revision, allow):
    """Download a model's files once into a shared HF cache (login node; resumes)."""
    from kit.models.pull import default_cache_dir, pull
    from kit.sites import load_site_if_given

    if to is None:
        site_obj = load_site_if_given(site, account)
        if site_obj is None:
            raise KitError("--to DIR or --site: where should the model go?")
        to = default_cache_dir(site_obj, account)
    path = pull(model, to, revision=revision, allow_patterns=list(allow) or None)
    click.echo(f"{model} is in {to}\n  snapshot: {path}")
