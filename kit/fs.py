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


def replace_together(files: list[tuple[Path, str]]) -> None:
    """Write files that must agree (the image lock and its defs) as near to one step as a file
    system allows: every new text goes to a temp file first (any failure there removes them all
    and changes nothing), then the renames run back to back with Ctrl-C and termination
    signals held until they are done."""
    import signal

    staged: list[tuple[Path, Path]] = []
    try:
        for path, text in files:
            tmp = path.with_name(f".{path.name}.tmp")
            staged.append((tmp, path))
            tmp.write_text(text)
    except OSError as e:
        for tmp, _ in staged:
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
        raise KitError(f"{staged[-1][1]}: cannot write it ({e.strerror}); nothing was changed") from None
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        for tmp, path in staged:
            tmp.replace(path)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def write_json(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
