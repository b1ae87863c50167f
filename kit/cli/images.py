"""`kit images`: list, build, pull, verify, inspect, push, lock."""

from __future__ import annotations

import sys

import click

from kit.cli.options import ACCOUNT_PATHS_HELP, emit_json, json_option, site_option


def image_account_option():
    return click.option("--account", help=ACCOUNT_PATHS_HELP)


def load(site, account):
    from kit.sites import load_site

    return load_site(site, account=account).site


@click.group()
def images():
    """Pinned container images: list, build, pull, verify, inspect, push, lock."""


@images.command("list")
@site_option()
@image_account_option()
@json_option()
def images_list(site, account, as_json):
    """The images of the lock; with a site, whether each is present and verified."""
    from kit.images.store import image_rows
    from kit.sites import load_site_if_given

    site_obj = load_site_if_given(site, account)
    rows = image_rows(site_obj, account)
    if as_json:
        emit_json(rows)
        return
    from kit.cli import tables

    tables.images_table(rows, site_obj.name if site_obj else None)


@images.command("build")
@click.argument("name", metavar="NAME|all")
@site_option()
@image_account_option()
@click.option("--to", "to", help="output directory (default: the site's paths.image_dir)")
@click.option("--force", is_flag=True, help="rebuild even when a verified image is present")
def images_build(name, site, account, to, force):
    """Build from containers/NAME.def with the site's runtime (--fakeroot) and record its sha256."""
    from kit.images.build import build
    from kit.images.lock import load_lock

    site_obj = load(site, account)
    for each in load_lock().names(name):
        path = build(site_obj, each, account=account, to=to, force=force)
        click.echo(f"{each}: {path} sha256 {load_lock().entry(each)['sif_sha256']}")


@images.command("pull")
@click.argument("name", metavar="NAME|all")
@site_option()
@image_account_option()
@click.option("--from", "source", type=click.Choice(["auto", "shared", "registry"]), default="auto", show_default=True,
              help="the site's shared image directory (copy) or its ORAS registry")
@click.option("--ref", help="ORAS reference to pull instead of the site's (oras://HOST/PATH:TAG)")
def images_pull(name, site, account, source, ref):
    """Fetch a published image, verify its sha256 against the lock, then put it in place."""
    from kit.images.lock import load_lock
    from kit.images.transfer import pull

    site_obj = load(site, account)
    for each in load_lock().names(name):
        path, what = pull(site_obj, each, account=account, source=source, ref=ref)
        click.echo(f"{each}: {path}: {what}")


@images.command("verify")
@click.argument("name", required=False, metavar="[NAME]")
@site_option()
@image_account_option()
def images_verify(name, site, account):
    """sha256 of the local images against the lock; exit 1 if one is missing or differs."""
    from kit.images.store import verify_images

    results = verify_images(load(site, account), name, account)
    for each, state, path in results:
        click.echo(f"{each}: {state}: {path}")
    if any(state != "verified" for _, state, _ in results):
        sys.exit(1)


@images.command("inspect")
@click.argument("name")
@site_option()
@image_account_option()
def images_inspect(name, site, account):
    """Labels and the runtime's metadata of a local image."""
    from kit.images.runtime import inspect

    emit_json(inspect(load(site, account), name, account))


@images.command("push")
@click.argument("name")
@site_option()
@image_account_option()
@click.option("--ref", help="ORAS reference (default: the site's images.registry/NAME:VERSION)")
def images_push(name, site, account, ref):
    """Push a verified local image to an ORAS registry."""
    from kit.images.transfer import push

    target = push(load(site, account), name, account=account, ref=ref)
    click.echo(f"{name}: pushed to {target}")


@images.command("lock")
@click.argument("names", nargs=-1, metavar="[NAME...]")
@click.option("--sif", "sif", nargs=2, metavar="NAME FILE", help="record the sha256 of an image built elsewhere")
def images_lock(names, sif):
    """Resolve upstream digests (registry API) into the lock and the defs; or record a SIF."""
    from pathlib import Path

    from kit.images.lock import load_lock, lock_digests, lock_path, record_external

    if sif:
        entry = record_external(sif[0], Path(sif[1]))
        click.echo(f"{sif[0]}: sha256 {entry['sif_sha256']} ({entry['sif_size']} bytes) recorded in {lock_path()}")
        return
    lock = load_lock()
    chosen = [n for name in names for n in lock.names(name)] or lock.names("all")
    for name, old, new in lock_digests(chosen):
        click.echo(f"{name}: {new}" + ("" if old == new else f" (was {old})"))
