"""The services directory (the site's ``paths.services_dir``, on storage the labs can read):
one directory per service, NAME/, holding

- ``service.json``: model, engine, current job id, node, port, URL, generation, state, started,
  walltime end, next renewal, successor, restarts (each generation rewrites it atomically);
- ``current``: the same in one line for the jobs (GENERATION JOBID STATE), ``generation``;
- ``key_hashes`` (LAB sha256hex), ``keys.json`` (labs, groups, dates), ``keys/LAB.key`` (0640,
  the lab's group only), ``usage/GEN-JOBID.jsonl`` (the guard's counts);
- ``job/``: the owner's 0700 job record (script, plan, the owner's key, logs).

A name resolves at each call: clients read service.json, never a cached address.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from kit.errors import KitError
from kit.jobs.record import JobRecord

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise KitError(f"service name {name!r}: use letters, digits, '.', '_' and '-' (at most 64, first a letter or digit)")
    return name


def services_root(site, account: str | None = None) -> Path:
    from kit.sites.paths import account_path

    text = site.paths.services_dir
    if not text:
        raise KitError(f"site {site.name}: paths.services_dir is not set; add it to the site file "
                       f"(a directory on shared storage the labs can read)")
    return Path(account_path(site, text, account, "services directory"))


@dataclass
class Service:
    name: str
    dir: Path

    @property
    def job_dir(self) -> Path:
        return self.dir / "job"

    def data(self) -> dict:
        try:
            return json.loads((self.dir / "service.json").read_text())
        except FileNotFoundError:
            raise KitError(f"service {self.name}: {self.dir}/service.json is missing") from None
        except PermissionError:
            raise KitError(f"service {self.name}: cannot read {self.dir}/service.json (permission denied)") from None
        except (OSError, json.JSONDecodeError) as e:
            raise KitError(f"service {self.name}: {self.dir}/service.json is unreadable ({e})") from None

    @property
    def url(self) -> str | None:
        data = self.data()
        if data.get("state") not in ("ready", "restarting") or not data.get("port"):
            return None
        return f"http://{data['host']}:{data['port']}"

    def key_file(self) -> Path | None:
        """The key this user may use: the owner's (its job record), else the first lab key file
        the user can read."""
        owner = self.job_dir / "api_key"
        if os.access(owner, os.R_OK):
            return owner
        keys = self.dir / "keys"
        try:
            candidates = sorted(keys.iterdir())
        except OSError:
            candidates = [keys / f"{lab}.key" for lab in lab_names(self)]
        for path in candidates:
            if path.suffix == ".key" and os.access(path, os.R_OK):
                return path
        return None

    def record(self) -> "ServiceRecord":
        return ServiceRecord(self)


def lab_names(service: Service) -> list[str]:
    try:
        return [line.split()[0] for line in (service.dir / "key_hashes").read_text().splitlines() if line.strip()]
    except OSError:
        return []


def find(root: Path, name: str) -> Service:
    check_name(name)
    d = root / name
    if not (d / "service.json").is_file():
        known = ", ".join(s.name for s in services(root)) or "none"
        raise KitError(f"unknown service {name!r}: no {root}/{name}/service.json (services: {known})")
    return Service(name, d)


def services(root: Path) -> list[Service]:
    if not root.is_dir():
        return []
    return [Service(d.name, d) for d in sorted(root.iterdir()) if (d / "service.json").is_file()]


def lookup(name: str, site: str | None = None, account: str | None = None) -> Service:
    """A service by name, in the services directory of --site (or KIT_SITE)."""
    from kit.sites import load_site_if_given

    site_obj = load_site_if_given(site)
    if site_obj is None:
        raise KitError(f"service {name}: which site? pass --site or set KIT_SITE")
    return find(services_root(site_obj, account), name)


class ServiceRecord(JobRecord):
    """A service seen as a job record by the commands that take JOB (chat, bench, connect,
    status, logs): the current generation's job id, endpoint and the key this user may use."""

    def __init__(self, service: Service):
        data = service.data()
        super().__init__(service.job_dir, dict(data, name=service.name, job_id=data.get("job_id"),
                                              requeue=True, service=True))
        self.service = service

    def endpoint(self) -> dict | None:
        data = self.service.data()
        if data.get("state") not in ("ready", "restarting") or not data.get("port"):
            return None
        return {k: data.get(k) for k in ("host", "node", "port", "engine", "job_id", "state", "started")}

    def failure(self) -> str | None:
        return None  # a generation's failure is in service.json's state and the logs

    @property
    def key_file(self) -> Path:
        path = self.service.key_file()
        if path is None:
            raise KitError(f"service {self.service.name}: you hold no key for it (no readable "
                           f"{self.service.dir}/keys/LAB.key); ask its staff for one")
        return path

    def save(self) -> None:
        pass  # the jobs write service.json; nothing else is kept for a service
