"""Building an image from its definition file with the site's runtime (--fakeroot), into a temp
file renamed into place, then recording its sha256 in the lock."""

from __future__ import annotations

from pathlib import Path

from kit.errors import KitError
from kit.fs import writable_dir
from kit.images.definition import check_agreement, missing_files_sources
from kit.images.lock import load_lock, record_sif, writable_file
from kit.images.runtime import call_runtime, runtime_binary, runtime_version, spython_env
from kit.images.store import image_dir, partial_file, verify_file


def build(site, name: str, *, account: str | None = None, to: str | None = None, force: bool = False) -> Path:
    lock = load_lock()
    entry = lock.entry(name)
    definition = check_agreement(lock, name)
    build_dir = lock.path.parent.parent  # %files paths in the defs are relative to the repository root
    missing = missing_files_sources(definition, build_dir)
    if missing:
        raise KitError(f"{definition.path}: %files needs {', '.join(missing)} in {build_dir}, which has none: build "
                       f"{name} from a kit source checkout (`kit images build {name}` in the repository root, "
                       f"or KIT_IMAGES_LOCK=<checkout>/containers/images.lock), not from an installed kit")
    runtime = runtime_binary(site)
    if not site.runtime.fakeroot:
        raise KitError(f"{site.name} does not allow unprivileged builds (runtime.fakeroot: false): build on a machine "
                       f"where you have root or fakeroot (`{Path(runtime).name} build {entry['sif']} "
                       f"containers/{entry['def']}` in the repo root), then publish it with `kit images push {name}` "
                       f"or copy it to the site's images.shared_dir, and record it with `kit images lock --sif {name} FILE`")
    out_dir = writable_dir(image_dir(site, account, to), "image dir")
    out = out_dir / entry["sif"]
    if out.exists() and not force and verify_file(out, entry) == "verified":
        return out
    writable_file(lock.path)
    with partial_file(out_dir, entry["sif"]) as partial:
        with spython_env(site, runtime, account):
            version = runtime_version()
            call_runtime(runtime, ["build", "--fakeroot", "--force", str(partial), str(definition.path)],
                         f"building {name}", cwd=build_dir)
        if not partial.is_file():
            raise KitError(f"building {name} failed: the runtime wrote no image")
        partial.replace(out)
    record_sif(lock, name, out, version)
    return out

