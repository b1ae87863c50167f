"""Per-lab keys of a service: ``add`` makes a key, writes it to ``keys/LAB.key`` that only the
lab's Unix group (and the owner) can read (0640), and adds its SHA-256 to ``key_hashes``, which
the running guard rereads within a request; ``revoke`` removes both. The job, its script,
its log and service.json never hold a key. ``keys.json`` keeps labs, groups and dates."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path

from kit.errors import KitError
from kit.fs import write_atomic, write_json
from kit.service.registry import NAME, Service


def _meta(service: Service) -> dict:
    try:
        return json.loads((service.dir / "keys.json").read_text())
    except FileNotFoundError:
        return {"labs": {}}
    except (OSError, json.JSONDecodeError) as e:
        raise KitError(f"{service.dir}/keys.json: cannot read it ({e})") from None


def _check_writable(service: Service) -> None:
    for path in (service.dir, service.dir / "keys"):
        if not os.access(path, os.W_OK | os.X_OK):
            raise KitError(f"service {service.name}: {path} is not writable by you (only the service's staff "
                           f"manage its keys)")


def _write_hashes(service: Service, labs: dict[str, str]) -> None:
    text = "".join(f"{lab} {digest}\n" for lab, digest in sorted(labs.items()))
    write_atomic(service.dir / "key_hashes", text)


def _hashes(service: Service) -> dict[str, str]:
    out = {}
    try:
        for line in (service.dir / "key_hashes").read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                out[parts[0]] = parts[1]
    except FileNotFoundError:
        pass
    return out


def add(service: Service, lab: str, group: str | None = None) -> Path:
    """A new key for LAB, readable by GROUP (default: a group named LAB); returns its file."""
    if not NAME.match(lab or ""):
        raise KitError(f"lab {lab!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    group = group or lab
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise KitError(f"--group {group}: no such Unix group (the lab's group must be able to read its key; "
                       f"pass --group GROUP)") from None
    _check_writable(service)
    meta = _meta(service)
    hashes = _hashes(service)
    if lab in meta["labs"] or lab in hashes:
        raise KitError(f"lab {lab} already has a key for {service.name} "
                       f"(`kit service keys {service.name} revoke {lab}` first to replace it)")
    key = secrets.token_urlsafe(32)
    path = service.dir / "keys" / f"{lab}.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KitError(f"{path} exists already: remove it, or revoke lab {lab}") from None
    try:
        with os.fdopen(fd, "w") as f:
            os.fchown(f.fileno(), -1, gid)
            os.fchmod(f.fileno(), 0o640)
            f.write(key + "\n")
        hashes[lab] = hashlib.sha256(key.encode()).hexdigest()
        _write_hashes(service, hashes)
        meta["labs"][lab] = {"group": group, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "file": str(path)}
        write_json(service.dir / "keys.json", meta)
    except PermissionError:
        path.unlink(missing_ok=True)
        raise KitError(f"--group {group}: cannot give the group its key file (you must belong to the group "
                       f"to chgrp to it)") from None
    except BaseException:
        path.unlink(missing_ok=True)
        hashes.pop(lab, None)
        _write_hashes(service, hashes)
        raise
    return path


def revoke(service: Service, lab: str) -> None:
    """The guard refuses LAB's key from its next request on; the key file is removed."""
    meta = _meta(service)
    hashes = _hashes(service)
    if lab not in meta["labs"] and lab not in hashes:
        known = ", ".join(sorted(meta["labs"])) or "none"
        raise KitError(f"lab {lab} has no key for {service.name} (labs with keys: {known})")
    _check_writable(service)
    hashes.pop(lab, None)
    _write_hashes(service, hashes)  # first: the guard refuses the key from here on
    (service.dir / "keys" / f"{lab}.key").unlink(missing_ok=True)
    entry = meta["labs"].pop(lab, {})
    meta.setdefault("revoked", []).append(dict(entry, lab=lab, revoked=datetime.now(timezone.utc)
                                               .isoformat(timespec="seconds")))
    write_json(service.dir / "keys.json", meta)


def listing(service: Service) -> list[dict]:
    """Labs with keys: group, created, last use (from the usage files)."""
    from kit.service.usage import last_use

    meta = _meta(service)
    seen = last_use(service)
    return [{"lab": lab, "group": entry.get("group"), "created": entry.get("created"), "last_used": seen.get(lab)}
            for lab, entry in sorted(meta["labs"].items())]
