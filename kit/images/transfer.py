"""Moving published images: pull (from the site's shared directory or its ORAS registry, verified
against the lock before it is put in place) and push (a verified image, to an ORAS registry)."""

from __future__ import annotations

import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

from kit.errors import KitError
from kit.fs import writable_dir
from kit.images.lock import load_lock, sha256_of, writable_file
from kit.images.runtime import call_runtime, runtime_binary, spython_env
from kit.images.store import image_dir, local_image, partial_file, verify_file

ORAS_REF = re.compile(r"^oras://[^/\s]+/[^\s:@]+:[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def registry_ref(site, entry: dict, name: str, ref: str | None) -> str:
    base = ref or (site.images.registry and f"{site.images.registry.rstrip('/')}/{name}:{entry['version']}")
    if not base:
        raise KitError(f"{site.name} has no images.registry: pass an ORAS reference (oras://HOST/PATH:TAG)")
    if not ORAS_REF.match(base):
        raise KitError(f"registry reference {base!r}: needs oras://HOST/PATH:TAG with an explicit tag")
    return base


def pull(site, name: str, *, account: str | None = None, source: str = "auto", ref: str | None = None) -> tuple[Path, str]:
    """Into a temp file, verified, then renamed into place; (path, what happened)."""
    from kit.sites import expand_user_path

    lock = load_lock()
    entry = lock.entry(name)
    out_dir = writable_dir(image_dir(site, account), "image dir")
    out = out_dir / entry["sif"]
    if not entry["sif_sha256"]:
        raise KitError(f"{lock.path}: images.{name}.sif_sha256 is not set: there is nothing to verify a pull against "
                       f"(staff: `kit images build {name}` or `kit images lock --sif {name} FILE`)")
    if verify_file(out, entry) == "verified":
        return out, "already present and verified"
    shared = Path(expand_user_path(site.images.shared_dir, account)) / entry["sif"] if site.images.shared_dir else None
    if source == "auto":
        source = "shared" if shared is not None and shared.is_file() else "registry"
    with partial_file(out_dir, entry["sif"]) as partial:
        if source == "shared":
            if shared is None or not shared.is_file():
                raise KitError(f"no {entry['sif']} in {site.name}'s images.shared_dir ({site.images.shared_dir})")
            shutil.copyfile(shared, partial)
            origin = str(shared)
        else:
            origin = registry_ref(site, entry, name, ref)
            runtime = runtime_binary(site)
            with spython_env(site, runtime, account):
                call_runtime(runtime, ["pull", "--force", "--name", str(partial), origin], f"pulling {origin}")
            if not partial.is_file():
                raise KitError(f"pulling {origin} failed: the runtime wrote no image")
        actual = sha256_of(partial)
        if actual != entry["sif_sha256"]:
            raise KitError(f"{origin}: sha256 {actual} does not match {lock.path} ({entry['sif_sha256']}); "
                           f"the download was deleted")
        partial.replace(out)
    return out, f"pulled from {origin} and verified"


def push(site, name: str, *, account: str | None = None, ref: str | None = None) -> str:
    lock = load_lock()
    entry = lock.entry(name)
    target = registry_ref(site, entry, name, ref)
    path = local_image(site, entry, account)
    state = verify_file(path, entry)
    if state != "verified":
        raise KitError(f"{path}: {state}; only an image that matches {lock.path} is pushed")
    writable_file(lock.path)  # before pushing: a push the lock cannot record is a push nobody can find
    runtime = runtime_binary(site)
    call_runtime(runtime, ["push", str(path), target], f"push to {target}")  # spython has no push
    entry["pushed"] = {"ref": target, "sha256": entry["sif_sha256"], "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    lock.save()
    return target

