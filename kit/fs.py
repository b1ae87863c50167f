"""Small file-system helpers shared by the commands that write (state, images, caches)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kit.errors import KitError


def writable_dir(path: Path, what: str, hint: str = "") -> Path:
    """Create ``path`` if needed and make sure kit can write there; else one clear error."""
    suffix = f"; {hint}" if hint else ""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KitError(f"{what} {path}: cannot create it ({e.strerror}){suffix}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise KitError(f"{what} {path}: not writable{suffix}")
    return path


def write_atomic(path: Path, text: str) -> None:
    """Write through a temp file and rename: readers see the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise KitError(f"{path}: cannot write it ({e.strerror})") from None


def write_json(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
