"""The engines' route tables (tests/engine_routes.yaml) and the matching of a request against them."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ROUTES_FILE = Path(__file__).resolve().parents[1] / "engine_routes.yaml"


@dataclass(frozen=True)
class Route:
    method: str  # "ANY": every method
    path: str  # as in the table: `{name}` one segment, `*name` the rest
    key: bool  # the engine itself asks for its key here
    prefix: bool = False

    @functools.cached_property
    def pattern(self) -> re.Pattern:
        parts = re.split(r"(\{[^}/]+\}|\*\w+$)", self.path)
        regex = "".join("[^/]+" if p.startswith("{") else ".+" if p.startswith("*") else re.escape(p)
                        for p in parts if p)
        return re.compile(regex + ("" if self.prefix else "$"))

    def matches(self, path: str) -> bool:
        return bool(self.pattern.match(path))


@functools.cache
def spec(engine: str) -> dict:
    return yaml.load(ROUTES_FILE.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))[engine]


@functools.cache
def table(engine: str) -> tuple[Route, ...]:
    return tuple(Route(r["method"], r["path"], bool(r["key"]), r.get("match") == "prefix")
                 for r in spec(engine)["routes"])


def find(engine: str, method: str, path: str) -> tuple[Route | None, list[Route]]:
    """(the route serving this request or None, every route whose path matches)."""
    same_path = [r for r in table(engine) if r.matches(path)]
    exact = [r for r in same_path if r.method == method]
    return (exact or [r for r in same_path if r.method == "ANY"] or [None])[0], same_path
