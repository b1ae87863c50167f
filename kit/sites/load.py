"""Find, merge and validate site configs.

Layers, lowest first: the packaged file (or the file ``--site`` names), the site-wide file
(``$KIT_SYSTEM_CONFIG_DIR`` or ``/etc/kit``, ``sites/NAME.yaml``), the user's file
(``$XDG_CONFIG_HOME/kit/sites/NAME.yaml``), then CLI flags and ``KIT_*`` variables.
Mappings merge deeply; lists and scalars replace. Every key remembers the file that set it,
so a validation error names the right file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.errors import KitError
from kit.resources import bundled_dir
from kit.sites.validate import origin_of, validate
from kit.yamlfile import read_yaml

ENV_SITE = "KIT_SITE"
ENV_ACCOUNT = "KIT_ACCOUNT"
ENV_STATE_DIR = "KIT_STATE_DIR"


def packaged_sites_dir() -> Path:
    return bundled_dir("site-configs")


def system_config_dir() -> Path:
    return Path(os.environ.get("KIT_SYSTEM_CONFIG_DIR", "/etc/kit"))


def user_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kit"


def packaged_site_names() -> list[str]:
    return sorted(p.stem for p in packaged_sites_dir().glob("*.yaml"))


def known_site_names() -> list[str]:
    """Packaged sites plus those defined only in a site-wide or user file."""
    names = set(packaged_site_names())
    for d in (system_config_dir() / "sites", user_config_dir() / "sites"):
        names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


@dataclass
class LoadedSite:
    site: Any  # kit.sites.schema.Site
    files: list[Path]
    origins: dict[tuple[str, ...], str] = field(default_factory=dict)

    def origin(self, path: tuple[str, ...]) -> str:
        return origin_of(self.origins, path)


def deep_merge(base: dict, top: dict, origin: str, origins: dict, prefix: tuple[str, ...] = ()) -> dict:
    """Merge ``top`` into a copy of ``base``; record in ``origins`` which file set each key."""
    out = dict(base)
    for key, value in top.items():
        path = prefix + (str(key),)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, origin, origins, path)
        else:
            out[key] = value
            for p in [p for p in origins if p[: len(path)] == path]:
                del origins[p]
        origins[path] = origin
    return out


def resolve_site_file(site: str) -> tuple[str, Path]:
    """A site name or a path to a YAML file -> (name, base file)."""
    looks_like_path = os.sep in site or site.endswith((".yaml", ".yml"))
    if looks_like_path:
        path = Path(site).expanduser()
        if not path.is_file():
            raise KitError(f"--site {site}: no such file")
        return path.stem, path
    path = packaged_sites_dir() / f"{site}.yaml"
    if path.is_file():
        return site, path
    for extra in (system_config_dir() / "sites" / f"{site}.yaml", user_config_dir() / "sites" / f"{site}.yaml"):
        if extra.is_file():  # a site that exists only as a site-wide or user file
            return site, extra
    known = ", ".join(known_site_names()) or "none"
    raise KitError(f"unknown site {site!r}: known sites are {known}, or pass a path to a site YAML file")


def choose_site(site: str | None) -> str:
    chosen = site or os.environ.get(ENV_SITE)
    if not chosen:
        known = ", ".join(known_site_names())
        raise KitError(f"no site given: pass --site NAME|FILE or set {ENV_SITE} (known sites: {known})")
    return chosen


def load_site(site: str | None = None, *, account: str | None = None, overrides: dict | None = None) -> LoadedSite:
    """Load, merge and validate a site. ``overrides`` is a nested dict from CLI flags."""
    name, base_file = resolve_site_file(choose_site(site))
    origins: dict[tuple[str, ...], str] = {}
    files = [base_file]
    merged = deep_merge({}, read_yaml(base_file), str(base_file), origins)
    origins[()] = str(base_file)
    for layer in (system_config_dir() / "sites" / f"{name}.yaml", user_config_dir() / "sites" / f"{name}.yaml"):
        if layer.is_file() and layer.resolve() != base_file.resolve():
            merged = deep_merge(merged, read_yaml(layer), str(layer), origins)
            files.append(layer)
    env_layer: dict[str, Any] = {}
    if os.environ.get(ENV_ACCOUNT):
        env_layer.setdefault("account", {})["default"] = os.environ[ENV_ACCOUNT]
    if os.environ.get(ENV_STATE_DIR):
        env_layer.setdefault("paths", {})["state_dir"] = os.environ[ENV_STATE_DIR]
    if env_layer:
        merged = deep_merge(merged, env_layer, "environment (KIT_*)", origins)
    cli_layer = dict(overrides or {})
    if account:
        cli_layer.setdefault("account", {})["default"] = account
    if cli_layer:
        merged = deep_merge(merged, cli_layer, "command line", origins)
    loaded = LoadedSite(site=validate(merged, origins), files=files, origins=origins)
    check_account(loaded)
    return loaded


def check_account(loaded: LoadedSite) -> None:
    acct = loaded.site.account
    if acct.default and acct.pattern and not re.match(acct.pattern, acct.default):
        where = loaded.origin(("account", "default"))
        raise KitError(
            f"{where}: account.default: {acct.default!r} does not look like an account on "
            f"{loaded.site.name} (pattern {acct.pattern}, e.g. {acct.placeholder})"
        )


def load_site_if_given(site: str | None, account: str | None = None):
    """The site from --site or KIT_SITE, or None when neither names one (commands that work
    without a site)."""
    if site is None and not os.environ.get(ENV_SITE):
        return None
    return load_site(site, account=account).site
