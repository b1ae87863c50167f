"""The image lock (containers/images.lock, or $KIT_IMAGES_LOCK): each image's upstream
reference and digest and, once built, the SIF's sha256. Writes go through a temp file; the
lock and the defs it pins are written together (kit.fs.replace_together), so a failure
part-way leaves them as they were."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from kit.errors import KitError
from kit.fs import write_atomic
from kit.resources import bundled_dir

LOCK_KEYS = ("def", "version", "upstream", "digest", "cuda", "sif", "sif_sha256", "sif_size", "runtime_version", "built",
             "pushed")
# unverified: why the upstream tag is not confirmed to exist (removed once its digest resolves);
# ptx_jit: true when the image's kernels are PTX the driver compiles at start (kit.images.cuda).
OPTIONAL_KEYS = ("unverified", "ptx_jit")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def lock_path() -> Path:
    return Path(os.environ.get("KIT_IMAGES_LOCK") or bundled_dir("containers") / "images.lock")


@dataclass
class Lock:
    path: Path
    data: dict

    @property
    def images(self) -> dict[str, dict]:
        return self.data["images"]

    def entry(self, name: str) -> dict:
        if name not in self.images:
            raise KitError(f"unknown image {name!r}: {self.path} has {', '.join(self.images)}")
        return self.images[name]

    def names(self, name: str) -> list[str]:
        """NAME, or every image for "all" (a KitError for an unknown name)."""
        if name == "all":
            return list(self.images)
        self.entry(name)
        return [name]

    def def_path(self, name: str) -> Path:
        return self.path.parent / self.entry(name)["def"]

    def render(self) -> str:
        import yaml

        header = "".join(line for line in self.path.read_text().splitlines(keepends=True) if line.startswith("#"))
        return header + yaml.safe_dump(self.data, sort_keys=False, default_flow_style=False)

    def save(self) -> None:
        write_atomic(self.path, self.render())


def writable_file(path: Path) -> None:
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        raise KitError(f"{path}: not writable; KIT_IMAGES_LOCK can point to a writable copy")


def load_lock(path: Path | None = None) -> Lock:
    from kit.yamlfile import read_yaml

    path = path or lock_path()
    if not path.is_file():
        raise KitError(f"{path}: no image lock file here (KIT_IMAGES_LOCK points elsewhere?)")
    data = read_yaml(path)
    images = data.get("images")
    if not isinstance(images, dict) or not images:
        raise KitError(f"{path}: images: missing or empty (a mapping of image name -> entry)")
    for name, entry in images.items():
        if not isinstance(entry, dict):
            raise KitError(f"{path}: images.{name}: must be a mapping with {', '.join(LOCK_KEYS)}")
        missing = [k for k in LOCK_KEYS if k not in entry]
        if missing:
            raise KitError(f"{path}: images.{name}.{missing[0]}: required key is missing")
        unknown = [k for k in entry if k not in LOCK_KEYS + OPTIONAL_KEYS]
        if unknown:
            raise KitError(f"{path}: images.{name}.{unknown[0]}: unknown key "
                           f"(allowed: {', '.join(LOCK_KEYS + OPTIONAL_KEYS)})")
        if entry.get("unverified") is not None and entry["digest"] != "unresolved":
            raise KitError(f"{path}: images.{name}.unverified: the digest is resolved, so the tag exists: remove "
                           f"unverified (`kit images lock {name}` does)")
        if entry.get("ptx_jit") not in (None, True, False):
            raise KitError(f"{path}: images.{name}.ptx_jit: true or false")
        if entry["digest"] != "unresolved" and not DIGEST.match(str(entry["digest"])):
            raise KitError(f"{path}: images.{name}.digest: {entry['digest']!r} is neither 'unresolved' nor sha256:<64 hex>")
        if entry["sif_sha256"] is not None and not re.match(r"^[0-9a-f]{64}$", str(entry["sif_sha256"])):
            raise KitError(f"{path}: images.{name}.sif_sha256: not a sha256 hex digest")
        if not re.match(r"^[A-Za-z0-9_.-]+\.sif$", str(entry["sif"])):
            raise KitError(f"{path}: images.{name}.sif: must be a file name ending in .sif")
    return Lock(path, data)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_sif(lock: Lock, name: str, sif: Path, version: str | None) -> dict:
    entry = lock.entry(name)
    entry.update(sif_sha256=sha256_of(sif), sif_size=sif.stat().st_size, runtime_version=version or None,
                 built=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    lock.save()
    return entry


def lock_digests(names: list[str]) -> list[tuple[str, str, str]]:
    """Resolve each image's upstream digest; then write the defs and the lock together, only
    when all resolved (kit.fs.replace_together). The digests of a def and its lock entry need
    not agree beforehand: a rerun repairs whatever an interrupted run left (both are rewritten)."""
    from kit.fs import replace_together
    from kit.images.definition import check_agreement
    from kit.images.registry import resolve_digest

    lock = load_lock()
    writable_file(lock.path)
    resolved = []
    for name in names:
        entry = lock.entry(name)
        check_agreement(lock, name, digest=False)
        writable_file(lock.def_path(name))
        resolved.append((name, entry["digest"], resolve_digest(entry["upstream"])))
    files = []
    for name, _, digest in resolved:
        entry = lock.entry(name)
        path = lock.def_path(name)
        text = path.read_text()
        text = re.sub(r"(?m)^From:.*$", f"From: {entry['upstream']}@{digest}", text, count=1)
        text = re.sub(r"(?m)^(\s*org\.kit\.upstream\.digest)\s+\S+\s*$", rf"\g<1> {digest}", text, count=1)
        files.append((path, text))
        entry["digest"] = digest
        entry.pop("unverified", None)  # the registry has the tag: it is verified now
    files.append((lock.path, lock.render()))
    replace_together(files)
    return resolved


def record_external(name: str, sif: Path, version: str | None = None) -> dict:
    """`kit images lock --sif NAME FILE`: record an image built elsewhere."""
    lock = load_lock()
    lock.entry(name)
    writable_file(lock.path)
    if not sif.is_file():
        raise KitError(f"--sif {sif}: no such file")
    return record_sif(lock, name, sif, version)
