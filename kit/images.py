"""Container images: the lock file, the definition files, and build/pull/verify/push/inspect.

The lock (containers/images.lock, or $KIT_IMAGES_LOCK) pins each image's upstream reference
and digest and, once built, the SIF's sha256.

spython parses the definition files and drives `version` and `inspect`. It only ever calls a
binary named `singularity`, so on an Apptainer-only site kit puts a `singularity` link to
`apptainer` first on PATH for it. Where spython falls short, kit calls the runtime itself:
spython 0.3.14 has no push, and its `build` and `pull` ignore the command's exit status (build
returns the image path whenever a file is there, pull always returns the path, and neither
keeps the runtime's error), so a failed or partial build or pull would pass unnoticed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from kit.errors import KitError
from kit.fs import writable_dir
from kit.resources import bundled_dir

LOCK_KEYS = ("def", "version", "upstream", "digest", "cuda", "sif", "sif_sha256", "sif_size", "runtime_version", "built",
             "pushed")
REQUIRED_SECTIONS = ("%labels", "%help", "%environment", "%test")
REQUIRED_LABELS = ("org.kit.version", "org.kit.image", "org.kit.upstream", "org.kit.upstream.digest", "org.kit.cuda")
SECTIONS = {"%setup", "%files", "%environment", "%post", "%runscript", "%startscript", "%test", "%labels", "%help",
            "%arguments", "%app", "%appinstall", "%apphelp", "%apprun", "%applabels", "%appenv", "%appfiles"}
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
ORAS_REF = re.compile(r"^oras://[^/\s]+/[^\s:@]+:[A-Za-z0-9_][A-Za-z0-9_.-]*$")


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

    def def_path(self, name: str) -> Path:
        return self.path.parent / self.entry(name)["def"]

    def save(self) -> None:
        import yaml

        header = "".join(line for line in self.path.read_text().splitlines(keepends=True) if line.startswith("#"))
        replace_text(self.path, header + yaml.safe_dump(self.data, sort_keys=False, default_flow_style=False))


def replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise KitError(f"{path}: cannot write it ({e.strerror})") from None


def writable_file(path: Path) -> None:
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        raise KitError(f"{path}: not writable; KIT_IMAGES_LOCK can point to a writable copy")


def load_lock(path: Path | None = None) -> Lock:
    from kit.sites import read_yaml

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
        unknown = [k for k in entry if k not in LOCK_KEYS]
        if unknown:
            raise KitError(f"{path}: images.{name}.{unknown[0]}: unknown key (allowed: {', '.join(LOCK_KEYS)})")
        if entry["digest"] != "unresolved" and not DIGEST.match(str(entry["digest"])):
            raise KitError(f"{path}: images.{name}.digest: {entry['digest']!r} is neither 'unresolved' nor sha256:<64 hex>")
        if entry["sif_sha256"] is not None and not re.match(r"^[0-9a-f]{64}$", str(entry["sif_sha256"])):
            raise KitError(f"{path}: images.{name}.sif_sha256: not a sha256 hex digest")
        if not re.match(r"^[A-Za-z0-9_.-]+\.sif$", str(entry["sif"])):
            raise KitError(f"{path}: images.{name}.sif: must be a file name ending in .sif")
    return Lock(path, data)


# --- definition files ------------------------------------------------------------------------

@dataclass
class DefFile:
    path: Path
    header: dict[str, str]
    sections: dict[str, list[str]]

    @property
    def labels(self) -> dict[str, str]:
        out = {}
        for line in self.sections.get("%labels", []):
            if line.strip() and not line.strip().startswith("#"):
                key, _, value = line.strip().partition(" ")
                out[key] = value.strip()
        return out


def parse_def(path: Path) -> DefFile:
    """Header keys and sections, checked; spython parses it too (header and stages)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise KitError(f"{path}: cannot read: {e.strerror}") from None
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("%"):
            name = stripped.split()[0]
            if name not in SECTIONS:
                raise KitError(f"{path}:{number}: unknown section {name} (allowed: {', '.join(sorted(SECTIONS))})")
            current = name
            sections.setdefault(name, [])
        elif current is None:
            if stripped and not stripped.startswith("#"):
                key, sep, value = stripped.partition(":")
                if not sep:
                    raise KitError(f"{path}:{number}: header line {stripped!r} is not 'Key: value'")
                header[key.strip()] = value.strip()
        else:
            sections[current].append(line)
    if header.get("Bootstrap") != "docker" or not header.get("From"):
        raise KitError(f"{path}: the header needs 'Bootstrap: docker' and a 'From:' image")
    missing = [s for s in REQUIRED_SECTIONS if s not in sections]
    if missing:
        raise KitError(f"{path}: no {missing[0]} section (every kit image has {', '.join(REQUIRED_SECTIONS)})")
    labels = DefFile(path, header, sections).labels
    absent = [k for k in REQUIRED_LABELS if k not in labels]
    if absent:
        raise KitError(f"{path}: %labels lacks {absent[0]} (required: {', '.join(REQUIRED_LABELS)})")
    image = header["From"].split("@")[0]
    if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
        raise KitError(f"{path}: From: {header['From']} must name an exact tag (never latest)")
    import io

    from spython.logger import bot
    from spython.main.parse.parsers import SingularityParser

    # spython's logger writes warnings to the streams it saw at import; keep them off kit's output.
    saved = bot.outputStream, bot.errorStream
    bot.outputStream = bot.errorStream = io.StringIO()
    try:
        stages = SingularityParser(str(path)).recipe
    except Exception as e:  # spython raises bare exceptions on recipes it cannot read
        raise KitError(f"{path}: spython cannot parse it: {e}") from None
    finally:
        bot.outputStream, bot.errorStream = saved
    if not stages:
        raise KitError(f"{path}: spython found no stage in it")
    return DefFile(path, header, sections)


def check_agreement(lock: Lock, name: str) -> DefFile:
    """The def and the lock entry name the same upstream, digest and CUDA version."""
    entry = lock.entry(name)
    d = parse_def(lock.def_path(name))
    image, _, digest = d.header["From"].partition("@")
    problems = []
    if image != entry["upstream"]:
        problems.append(f"From: {image} vs upstream {entry['upstream']}")
    if (digest or "unresolved") != entry["digest"]:
        problems.append(f"From: digest {digest or 'none'} vs digest {entry['digest']}")
    labels = d.labels
    if labels["org.kit.upstream"] != entry["upstream"]:
        problems.append(f"label org.kit.upstream {labels['org.kit.upstream']}")
    if labels["org.kit.upstream.digest"] != entry["digest"]:
        problems.append(f"label org.kit.upstream.digest {labels['org.kit.upstream.digest']}")
    cuda = None if labels["org.kit.cuda"] == "none" else labels["org.kit.cuda"]
    if cuda != (str(entry["cuda"]) if entry["cuda"] is not None else None):
        problems.append(f"label org.kit.cuda {labels['org.kit.cuda']} vs cuda {entry['cuda']}")
    if problems:
        raise KitError(f"{d.path} and {lock.path} disagree for {name}: {'; '.join(problems)}")
    return d


# --- files ----------------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def image_dir(site, account: str | None = None, override: str | None = None) -> Path:
    from kit.sites import expand_user_path

    text = override or site.paths.image_dir
    if "{account}" in text and not (account or site.account.default):
        raise KitError(f"--account: the {site.name} image directory is per account ({text})")
    return Path(expand_user_path(text, account or site.account.default))


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
    from kit import jobs

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
    cache = jobs.state_root(site).parent / "verified-images.json"
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


def cuda_problem(entry: dict, site) -> tuple[str | None, str | None]:
    """(error, warning) for an image's CUDA against the site's driver ceiling.

    A newer CUDA major than the driver's cannot run; a newer minor runs through CUDA's
    minor-version compatibility, without PTX JIT (a warning)."""
    need = entry.get("cuda")
    if not need:
        return None, None
    have = site.driver.cuda_max
    need_v, have_v = tuple(map(int, str(need).split("."))), tuple(map(int, have.split(".")))
    if need_v[0] > have_v[0]:
        return (f"the image needs CUDA {need}, and {site.name}'s driver supports up to CUDA {have} "
                f"(driver.cuda_max): use an image built on CUDA {have_v[0]}.x"), None
    if need_v > have_v:
        return None, (f"the image is built on CUDA {need} and {site.name}'s driver supports {have}: it runs through "
                      f"CUDA minor-version compatibility (no PTX JIT)")
    return None, None


# --- the runtime -----------------------------------------------------------------------------

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


def record_sif(lock: Lock, name: str, sif: Path, version: str | None) -> dict:
    entry = lock.entry(name)
    entry.update(sif_sha256=sha256_of(sif), sif_size=sif.stat().st_size, runtime_version=version or None,
                 built=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    lock.save()
    return entry


def build(site, name: str, *, account: str | None = None, to: str | None = None, force: bool = False) -> Path:
    lock = load_lock()
    entry = lock.entry(name)
    definition = check_agreement(lock, name)
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
            # %files paths in the defs are relative to the repository root.
            call_runtime(runtime, ["build", "--fakeroot", "--force", str(partial), str(definition.path)],
                         f"building {name}", cwd=lock.path.parent.parent)
        if not partial.is_file():
            raise KitError(f"building {name} failed: the runtime wrote no image")
        partial.replace(out)
    record_sif(lock, name, out, version)
    return out


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
    runtime = runtime_binary(site)
    call_runtime(runtime, ["push", str(path), target], f"push to {target}")  # spython has no push
    entry["pushed"] = {"ref": target, "sha256": entry["sif_sha256"], "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    lock.save()
    return target


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


def lock_digests(names: list[str]) -> list[tuple[str, str, str]]:
    """Resolve each image's upstream digest; write the lock and the defs only when all resolved."""
    from kit.registry import resolve_digest

    lock = load_lock()
    writable_file(lock.path)
    resolved = []
    for name in names:
        entry = lock.entry(name)
        check_agreement(lock, name)
        resolved.append((name, entry["digest"], resolve_digest(entry["upstream"])))
    for name, _, digest in resolved:  # every def first, each through a temp file; the lock last
        entry = lock.entry(name)
        path = lock.def_path(name)
        text = path.read_text()
        text = re.sub(r"(?m)^From:.*$", f"From: {entry['upstream']}@{digest}", text, count=1)
        text = re.sub(r"(?m)^(\s*org\.kit\.upstream\.digest)\s+\S+\s*$", rf"\g<1> {digest}", text, count=1)
        replace_text(path, text)
        entry["digest"] = digest
    lock.save()
    return resolved


def record_external(name: str, sif: Path, version: str | None = None) -> dict:
    """`kit images lock --sif NAME FILE`: record an image built elsewhere."""
    lock = load_lock()
    lock.entry(name)
    writable_file(lock.path)
    if not sif.is_file():
        raise KitError(f"--sif {sif}: no such file")
    return record_sif(lock, name, sif, version)
