"""The container runtime (SingularityCE or Apptainer), driven through spython where it works.

spython only ever calls a binary named `singularity`, so on an Apptainer-only site kit puts a
`singularity` link to `apptainer` first on PATH for it. Where spython falls short, kit calls
the runtime itself: spython 0.3.14 has no push, and its `build` and `pull` ignore the command's
exit status (build returns the image path whenever a file is there, pull always returns the
path, and neither keeps the runtime's error), so a failed or partial build or pull would pass
unnoticed."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from kit.errors import KitError
from kit.fs import writable_dir
from kit.images.lock import load_lock
from kit.images.store import local_image, verify_file


def runtime_binary(site) -> str:
    for candidate in site.runtime.binaries:
        path = shutil.which(candidate)
        if path:
            return path
    hint = f"`module load {site.runtime.module}`" if site.runtime.module else "install Apptainer or SingularityCE"
    raise KitError(f"no container runtime on PATH ({' or '.join(site.runtime.binaries)}): on {site.name}, {hint}")


@contextlib.contextmanager
def spython_env(site, runtime: str, account: str | None):
    """spython calls `singularity`: link it to the site's runtime; set the cache and tmp dirs."""
    from kit.sites import expand_user_path

    saved = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="kit-runtime-") as shim:
        os.symlink(runtime, Path(shim) / "singularity")
        os.environ["PATH"] = f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"
        cache = writable_dir(Path(expand_user_path(site.runtime.cache_dir, account)), "runtime.cache_dir")
        tmp = writable_dir(Path(expand_user_path(site.runtime.tmp_dir, account)), "runtime.tmp_dir")
        for prefix in ("SINGULARITY", "APPTAINER"):
            os.environ[f"{prefix}_CACHEDIR"] = str(cache)
            os.environ[f"{prefix}_TMPDIR"] = str(tmp)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


def runtime_version() -> str:
    from spython.main import Client

    return (Client.version() or "").strip()


def call_runtime(runtime: str, args: list[str], what: str, cwd: Path | None = None) -> str:
    """Run the runtime; a failure is one KitError with its FATAL/ERROR line."""
    proc = subprocess.run([runtime, *args], capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise KitError(f"{what} failed: {runtime_error(proc.stderr or proc.stdout)}")
    return proc.stdout


def runtime_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith(("FATAL", "ERROR"))]
    return re.sub(r"\s+", " ", (fatal or lines or ["no output"])[-1])


def inspect(site, name: str, account: str | None = None) -> dict:
    lock = load_lock()
    entry = lock.entry(name)
    path = local_image(site, entry, account)
    if not path.is_file():
        raise KitError(f"image {path} not found: `kit images pull {name}`")
    runtime = runtime_binary(site)
    from spython.main import Client

    with spython_env(site, runtime, account):
        info = Client.inspect(str(path), quiet=True)
    # spython returns the JSON's "data" ({"attributes": ...}), or {"message", "return_code"} on failure.
    if not isinstance(info, dict) or "return_code" in info:
        message = "\n".join(info.get("message", [])) if isinstance(info, dict) else str(info)
        raise KitError(f"{Path(runtime).name} inspect {path} failed: {runtime_error(message)}")
    attributes = info.get("attributes", {})
    return {"image": name, "path": str(path), "lock": entry, "verified": verify_file(path, entry),
            "labels": attributes.get("labels", {}), "runtime": attributes}

