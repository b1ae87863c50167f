"""`kit sites`: list, show, check against the live cluster."""

from __future__ import annotations

import sys

import click

from kit.cli.options import emit_json, json_option


@click.group()
def sites():
    """Site configs: list, show, check against the live cluster."""


@sites.command("list")
@json_option()
def sites_list(as_json):
    """Packaged sites (plus site-wide and user files)."""
    from kit.cli import tables
    from kit.sites import known_site_names, load_site

    rows = [load_site(name) for name in known_site_names()]
    if as_json:
        emit_json([{"name": r.site.name, "description": r.site.description, "files": [str(f) for f in r.files]} for r in rows])
    else:
        tables.sites_table(rows)


@sites.command("show")
@click.argument("name", metavar="NAME|FILE")
@json_option("print the merged, validated config as JSON")
def sites_show(name, as_json):
    """Partitions, GPU tiers, paths and the values marked as assumed."""
    import msgspec

    from kit.cli import tables
    from kit.sites import load_site

    loaded = load_site(name)
    if as_json:
        emit_json(msgspec.to_builtins(loaded.site))
    else:
        tables.site_detail(loaded)


@sites.command("check")
@click.argument("name", metavar="NAME|FILE")
@json_option("print the findings as JSON")
def sites_check(name, as_json):
    """Compare the site config with the live cluster (sinfo/scontrol); exit 1 on any drift."""
    from kit.cli import tables
    from kit.sites import load_site
    from kit.sites.check import check_site

    loaded = load_site(name)
    findings = check_site(loaded.site)
    if as_json:
        emit_json({"site": loaded.site.name, "ok": not findings, "drift": findings})
    else:
        tables.check_report(loaded.site.name, findings)
    if findings:
        sys.exit(1)
