"""Validating a merged site config against the schema, with errors that name the file and key."""

from __future__ import annotations

import re
import types
from typing import Any, Literal

from kit.errors import KitError


def origin_of(origins: dict, path: tuple[str, ...]) -> str:
    for n in range(len(path), 0, -1):
        if path[:n] in origins:
            return origins[path[:n]]
    return origins.get((), "site config")


def validate(data: dict, origins: dict):
    import msgspec

    from kit.sites.schema import Site

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

    from kit.sites.schema import RENAMED_KEYS, Site

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
        renamed = RENAMED_KEYS.get(unknown.group(1))
        if renamed in allowed:
            message = f"renamed {renamed}: the value is in GiB (1024^3 bytes), as Slurm reads --mem=NG"
        else:
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

