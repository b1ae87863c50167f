"""Definition files (containers/*.def): parsed, checked for the sections and labels every kit
image carries, and checked against the lock. spython parses them too (header and stages)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kit.errors import KitError
from kit.images.lock import Lock

REQUIRED_SECTIONS = ("%labels", "%help", "%environment", "%test")
REQUIRED_LABELS = ("org.kit.version", "org.kit.image", "org.kit.upstream", "org.kit.upstream.digest", "org.kit.cuda")
SECTIONS = {"%setup", "%files", "%environment", "%post", "%runscript", "%startscript", "%test", "%labels", "%help",
            "%arguments", "%app", "%appinstall", "%apphelp", "%apprun", "%applabels", "%appenv", "%appfiles"}


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


def check_agreement(lock: Lock, name: str, digest: bool = True) -> DefFile:
    """The def and the lock entry name the same upstream, digest and CUDA version (``digest=False``:
    all but the digest, which `kit images lock` is about to rewrite in both)."""
    entry = lock.entry(name)
    d = parse_def(lock.def_path(name))
    image, _, from_digest = d.header["From"].partition("@")
    problems = []
    if image != entry["upstream"]:
        problems.append(f"From: {image} vs upstream {entry['upstream']}")
    if digest and (from_digest or "unresolved") != entry["digest"]:
        problems.append(f"From: digest {from_digest or 'none'} vs digest {entry['digest']} (`kit images lock {name}` "
                        f"rewrites both)")
    labels = d.labels
    if labels["org.kit.upstream"] != entry["upstream"]:
        problems.append(f"label org.kit.upstream {labels['org.kit.upstream']}")
    if digest and labels["org.kit.upstream.digest"] != entry["digest"]:
        problems.append(f"label org.kit.upstream.digest {labels['org.kit.upstream.digest']}")
    cuda = None if labels["org.kit.cuda"] == "none" else labels["org.kit.cuda"]
    if cuda != (str(entry["cuda"]) if entry["cuda"] is not None else None):
        problems.append(f"label org.kit.cuda {labels['org.kit.cuda']} vs cuda {entry['cuda']}")
    if problems:
        raise KitError(f"{d.path} and {lock.path} disagree for {name}: {'; '.join(problems)}")
    return d


def files_sources(d: DefFile) -> list[str]:
    """The source paths of the def's %files lines (relative to the build directory)."""
    sources = []
    for line in d.sections.get("%files", []):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            sources.append(stripped.split()[0])
    return sources


def missing_files_sources(d: DefFile, build_dir: Path) -> list[str]:
    """%files sources absent from the build directory (an installed kit bundles containers/ but
    has no pyproject.toml or source tree to copy)."""
    return [src for src in files_sources(d)
            if not (any(build_dir.glob(src)) if any(c in src for c in "*?[") else (build_dir / src).exists())]

