"""Serving as ordinary users on the real local Slurm: kit-lab-a submits, kit-lab-b attacks.

Everything else in the suite runs as root, which reads any file and binds any port; here the
job runs as its unprivileged owner, so the 0600 key, the 0700 record, the sticky port directory
and kit's key guard are tried from another user's side.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from standin.site import cancel_jobs, standin_site

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parents[1]
OWNER, OTHER = "kit-lab-a", "kit-lab-b"


def as_user(user: str, *args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """A command run by ``user`` with exactly ``env`` (plus PATH and the user's identity)."""
    full = {"PATH": os.environ["PATH"], "USER": user, "LOGNAME": user, "HOME": "/nonexistent", "HF_HUB_OFFLINE": "1",
            **(env or {})}
    cmd = ["runuser", "-u", user, "--", "env", "-i", *[f"{k}={v}" for k, v in full.items()], *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def kit_as(user: str, env: dict, *args: str, **kw) -> subprocess.CompletedProcess:
    return as_user(user, sys.executable, "-m", "kit.cli", *args, env=env, **kw)


def users_top(prefix: str) -> Path:
    """The ordinary users (tests/cluster/users-up.sh), and a new 0755 directory in /tmp for their
    homes (pytest's own are root's alone)."""
    subprocess.run(["bash", str(ROOT / "tests" / "cluster" / "users-up.sh"), sys.executable], check=True,
                   capture_output=True, text=True)
    top = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    top.chmod(0o755)
    return top


def give(user: str, *trees: Path) -> None:
    """Everything under ``trees`` to ``user``; each tree's top 0755: a home other users may look
    into, as many are, so that only kit's own modes protect what it writes."""
    entry = pwd.getpwnam(user)
    for tree in trees:
        for path in [tree, *tree.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
        tree.chmod(0o755)


@pytest.fixture(scope="module")
def lab(slurm_cluster):
    top = users_top("kit-users-")
    home = top / OWNER
    setup = standin_site(home)  # model, stand-in images, lock and a user site layer
    setup["env"]["HOME"] = str(home)
    give(OWNER, home)
    yield {"top": top, "home": home, "env": setup["env"], "model": setup["model"]}
    cancel_jobs(home)  # leave nothing running
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def owned_job(lab):
    r = kit_as(OWNER, lab["env"], "serve", str(lab["model"]), "--engine", "tgi", "--name", "lab-tgi", "--json")
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    w = kit_as(OWNER, lab["env"], "wait", "lab-tgi", "--timeout", "120")
    assert w.returncode == 0, w.stderr
    return dict(record, url=w.stdout.strip(), dir=lab["home"] / "state" / "jobs" / "lab-tgi")


def test_the_job_runs_as_its_owner(owned_job):
    user = subprocess.run(["squeue", "-h", "-j", owned_job["job_id"], "-o", "%u"], capture_output=True, text=True)
    assert user.stdout.strip() == OWNER
    endpoint = owned_job["dir"] / "endpoint.json"
    assert endpoint.stat().st_uid == pwd.getpwnam(OWNER).pw_uid  # written by the job itself


def test_another_user_reads_neither_key_nor_record(lab, owned_job):
    assert oct(owned_job["dir"].stat().st_mode & 0o777) == "0o700"
    assert oct((owned_job["dir"] / "api_key").stat().st_mode & 0o777) == "0o600"
    for name in ("api_key", "record.json", "job.sbatch", "endpoint.json", f"slurm-{owned_job['job_id']}.out"):
        r = as_user(OTHER, "cat", str(owned_job["dir"] / name))
        assert r.returncode != 0 and "Permission denied" in r.stderr, name
    r = as_user(OTHER, "ls", str(owned_job["dir"]))
    assert r.returncode != 0 and "Permission denied" in r.stderr


def fetch(url: str, method: str = "GET", key: str | None = None, body: bytes | None = None) -> int:
    req = urllib.request.Request(url, method=method, data=body, headers={"Content-Type": "application/json"})
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=60) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_another_user_cannot_use_the_endpoint(owned_job):
    """kit-lab-b knows the node and port (anyone can scan them) but not the key."""
    script = (
        "import sys, urllib.request, urllib.error\n"
        "url = sys.argv[1]\n"
        "out = []\n"
        "for method, path in [('GET', '/info'), ('GET', '/metrics'), ('GET', '/v1/models'), ('POST', '/generate'),\n"
        "                     ('POST', '/v1/chat/completions'), ('POST', '/invocations'), ('GET', '/health')]:\n"
        "    req = urllib.request.Request(url + path, method=method, data=b'{}' if method == 'POST' else None,\n"
        "                                 headers={'Authorization': 'Bearer guess', 'Content-Type': 'application/json'})\n"
        "    try:\n"
        "        code = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=30).status\n"
        "    except urllib.error.HTTPError as e:\n"
        "        code = e.code\n"
        "    out.append(f'{method} {path} {code}')\n"
        "print('\\n'.join(out))\n"
    )
    r = as_user(OTHER, sys.executable, "-c", script, owned_job["url"])
    assert r.returncode == 0, r.stderr
    codes = dict(line.rsplit(" ", 1) for line in r.stdout.splitlines())
    assert codes.pop("GET /health") == "200"
    assert set(codes.values()) == {"401"}, codes


def test_the_owner_chats_and_stops(lab, owned_job):
    r = kit_as(OWNER, lab["env"], "chat", "lab-tgi", "Hello", "--max-tokens", "4")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    r = kit_as(OTHER, dict(lab["env"], KIT_STATE_DIR=str(lab["top"] / "b-state")), "chat", owned_job["url"], "Hi")
    assert r.returncode != 0 and "refused the API key (401)" in r.stderr
    r = kit_as(OWNER, lab["env"], "stop", "lab-tgi")
    assert r.returncode == 0 and "CANCELLED" in r.stdout, r.stderr
