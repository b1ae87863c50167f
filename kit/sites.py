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
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kit.errors import KitError
from kit.resources import bundled_dir

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
    site: Any  # kit.site_schema.Site
    files: list[Path]
    origins: dict[tuple[str, ...], str] = field(default_factory=dict)

    def origin(self, path: tuple[str, ...]) -> str:
        return origin_of(self.origins, path)


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """A safe loader that refuses a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise KitError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise KitError(f"{path}: not a UTF-8 text file") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise KitError(f"{path}{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KitError(f"{path}: a site file must be a mapping of keys, got {type(data).__name__}")
    return data


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


def origin_of(origins: dict, path: tuple[str, ...]) -> str:
    for n in range(len(path), 0, -1):
        if path[:n] in origins:
            return origins[path[:n]]
    return origins.get((), "site config")


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


def validate(data: dict, origins: dict):
    import msgspec

    from kit.site_schema import Site

    data = {k: v for k, v in data.items() if not str(k).startswith("x-")}  # YAML anchors live in x-* keys
    try:
        site = msgspec.convert(data, Site)
    except msgspec.ValidationError as e:
        path, message = explain_validation_error(e, data)
        key = ".".join(path) + ": " if path else ""
        raise KitError(f"{origin_of(origins, path)}: {key}{message}") from None
    for key_path in site.assumed:
        if not has_path(data, tuple(key_path.split("."))):
            where = origin_of(origins, ("assumed",))
            raise KitError(f"{where}: assumed.{key_path}: names no key in the site config")
    return site


def has_path(data: Any, path: tuple[str, ...]) -> bool:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return True


_TOKEN = re.compile(r"\.([^.\[]+)|\[([^\]]*)\]")


def explain_validation_error(error, data: dict) -> tuple[tuple[str, ...], str]:
    """msgspec says ``Expected `int`, got `str` - at `$.partitions[...].max_walltime```; name the key
    behind each ``[...]`` by finding the entry that fails, and list allowed keys for unknown ones."""
    import msgspec

    from kit.site_schema import Site

    text = str(error)
    message, sep, where = text.rpartition(" - at `")
    if not sep:
        message, where = text, "$`"
    typ: Any = Site
    node: Any = data
    path: list[str] = []
    for name, index in _TOKEN.findall(where.rstrip("`")[1:]):
        if name:
            path.append(name)
            typ = _field_type(typ, name)
            node = node.get(name) if isinstance(node, dict) else None
        elif isinstance(node, dict):
            value_type = _unwrap(typ).__args__[1] if hasattr(_unwrap(typ), "__args__") else Any
            bad = next((k for k, v in node.items() if not _converts(msgspec, v, value_type)), None)
            if bad is None:
                break
            path.append(str(bad))
            typ, node = value_type, node[bad]
        elif isinstance(node, list) and index.isdigit():
            path.append(index)
            node = node[int(index)] if int(index) < len(node) else None
            typ = getattr(_unwrap(typ), "__args__", (Any,))[0]
    unknown = re.match(r"Object contains unknown field `(.+)`", message)
    if unknown:
        path.append(unknown.group(1))
        allowed = getattr(_unwrap(typ), "__struct_fields__", ())
        message = "unknown key" + (f" (allowed here: {', '.join(allowed)})" if allowed else "")
    missing = re.match(r"Object missing required field `(.+)`", message)
    if missing:
        path.append(missing.group(1))
        message = "required key is missing"
    literal = _unwrap(typ)
    if message.startswith("Invalid enum value") and getattr(literal, "__origin__", None) is Literal:
        message += f" (allowed: {', '.join(map(str, literal.__args__))})"
    return tuple(path), message.replace("`", "'")


def _unwrap(typ: Any) -> Any:
    """Annotated[X, ...] -> X; X | None -> X."""
    from typing import Annotated, Union, get_args, get_origin

    while True:
        origin = get_origin(typ)
        if origin is Annotated:
            typ = get_args(typ)[0]
        elif origin in (Union, types.UnionType):
            typ = next(a for a in get_args(typ) if a is not type(None))
        else:
            return typ


def _field_type(struct: Any, name: str) -> Any:
    from typing import get_type_hints

    struct = _unwrap(struct)
    try:
        return get_type_hints(struct, include_extras=True).get(name, Any)
    except TypeError:
        return Any


def _converts(msgspec, value, typ) -> bool:
    try:
        msgspec.convert(value, typ)
        return True
    except msgspec.ValidationError:
        return False


def check_account(loaded: LoadedSite) -> None:
    acct = loaded.site.account
    if acct.default and acct.pattern and not re.match(acct.pattern, acct.default):
        where = loaded.origin(("account", "default"))
        raise KitError(
            f"{where}: account.default: {acct.default!r} does not look like an account on "
            f"{loaded.site.name} (pattern {acct.pattern}, e.g. {acct.placeholder})"
        )


def expand_user_path(text: str, account: str | None = None) -> str:
    """Fill {account} and expand ~ and $USER-style variables of the machine kit runs on
    ($USER is the login name even where the environment lacks it)."""
    import getpass

    if account is not None:
        text = text.replace("{account}", account)
    user = os.environ.get("USER") or getpass.getuser()
    text = text.replace("${USER}", user).replace("$USER", user)
    return os.path.expandvars(os.path.expanduser(text))
