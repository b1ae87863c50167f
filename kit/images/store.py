"""The site's image directory: where each locked image lives, whether it matches the lock, and
the temp files that downloads and builds write before they are renamed into place."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from kit.errors import KitError
from kit.images.lock import load_lock, sha256_of


def image_dir(site, account: str | None = None, override: str | None = None) -> Path:
    from kit.sites import account_path

    return Path(account_path(site, override or site.paths.image_dir, account, "image directory"))


def local_image(site, entry: dict, account: str | None = None) -> Path:
    return image_dir(site, account) / entry["sif"]


def verify_file(path: Path, entry: dict) -> str:
    """'verified', 'missing', 'unknown' (no checksum in the lock) or 'mismatch'."""
    if not path.is_file():
        return "missing"
    if not entry["sif_sha256"]:
        return "unknown"
    return "verified" if sha256_of(path) == entry["sif_sha256"] else "mismatch"


def verified_image(site, name: str, account: str | None = None) -> tuple[Path, dict]:
    """The image a job should run: present in the site's image dir and matching the lock.

    A check is remembered (by path, size and mtime) under the state dir, so a multi-GB SIF is
    hashed once, not at every `kit serve`."""
    from kit.sites.paths import state_dir

    lock = load_lock()
    entry = lock.entry(name)
    path = local_image(site, entry, account)
    if not path.is_file():
        raise KitError(f"image {path} not found: `kit images pull {name}` (labs) or `kit images build {name}` (staff)")
    if not entry["sif_sha256"]:
        raise KitError(f"{lock.path}: images.{name}.sif_sha256 is not set, so {path} cannot be verified: "
                       f"staff build it (`kit images build {name}`) or record it (`kit images lock --sif {name} FILE`)")
    stat = path.stat()
    stamp = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{entry['sif_sha256']}"
    cache = state_dir(site) / "verified-images.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, json.JSONDecodeError):
        known = {}
    if known.get(str(path)) != stamp:
        actual = sha256_of(path)
        if actual != entry["sif_sha256"]:
            raise KitError(f"image {path} does not match {lock.path}: sha256 {actual}, expected {entry['sif_sha256']}; "
                           f"`kit images pull {name}` replaces it")
        known[str(path)] = stamp
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(known, indent=1))
    return path, entry


@contextlib.contextmanager
def partial_file(out_dir: Path, sif: str):
    """A temp file beside the final image, removed on any exit: also on SIGTERM or SIGHUP (a
    dropped SSH session), which become SystemExit here. Leftovers of a killed kit on this host
    (SIGKILL) are swept at the next start."""
    import signal
    import socket

    host = socket.gethostname().split(".")[0]
    for stale in out_dir.glob(f".{sif}.partial-{host}-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            stale.unlink(missing_ok=True)
    partial = out_dir / f".{sif}.partial-{host}-{os.getpid()}"

    def interrupted(signum, frame):
        raise SystemExit(128 + signum)

    saved = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield partial
    finally:
        partial.unlink(missing_ok=True)
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def image_rows(site=None, account: str | None = None) -> list[dict]:
    """`kit images list`: every locked image; with a site, where it is and whether it verifies."""
    rows = []
    for name, entry in load_lock().images.items():
        row = {"image": name, "version": entry["version"], "upstream": entry["upstream"], "digest": entry["digest"],
               "cuda": entry["cuda"], "sif": entry["sif"], "sif_sha256": entry["sif_sha256"],
               "unverified": entry.get("unverified")}
        if site is not None:
            path = local_image(site, entry, account)
            row.update(path=str(path), local=verify_file(path, entry))
        rows.append(row)
    return rows


def verify_images(site, name: str | None, account: str | None = None) -> list[tuple[str, str, Path]]:
    """(image, state, path) for NAME, or for every image present when no NAME is given (an
    image that is not there is then no failure: a lab pulls only the images it uses)."""
    lock = load_lock()
    out = []
    for each in lock.names(name) if name else list(lock.images):
        entry = lock.entry(each)
        path = local_image(site, entry, account)
        state = verify_file(path, entry)
        if name is None and state == "missing":
            continue
        out.append((each, state, path))
    return out
