"""Small file-system checks shared by the commands that write (state, images, caches)."""

from __future__ import annotations

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
