"""Where the files shipped beside the package live (site configs, templates, container defs).

A wheel carries them under ``kit/_bundled``; a source checkout (editable install) has them at
the repository root.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    inside = PACKAGE_DIR / "_bundled" / name
    return inside if inside.is_dir() else PACKAGE_DIR.parent / name


def data_file(name: str) -> Path:
    return PACKAGE_DIR / "data" / name
