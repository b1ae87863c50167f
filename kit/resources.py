"""Files shipped with kit: the bundled directories (site configs, templates, container defs)
and the data files each package keeps beside its code.

A wheel carries the bundled directories under ``kit/_bundled``; a source checkout (editable
install) has them at the repository root.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    inside = PACKAGE_DIR / "_bundled" / name
    return inside if inside.is_dir() else PACKAGE_DIR.parent / name


@lru_cache(maxsize=None)
def packaged_yaml(path: Path) -> dict:
    """A YAML data file shipped inside the package (read once per process)."""
    import yaml

    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
