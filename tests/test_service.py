"""Shared services on the real local Slurm, as ordinary users: kit-staff deploys and hands out
keys, kit-lab-a and kit-lab-b each use their own, kit-other holds none.

Three services run at once to keep the file short (about 4-5 minutes, most of it the queue
service's two 2-minute walltimes): `q` renews in queue mode and carries the keys, usage and
client-by-name checks; `o` renews in overlap mode under a client that must never fail; `r` has
its engine killed until it requeues. Only the runtime and the engines are stand-ins.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from standin.site import standin_site
from test_serve_users import as_user, give, kit_as, users_top

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parents[1]
STAFF, LAB_A, LAB_B, OTHER = "kit-staff", "kit-lab-a", "kit-lab-b", "kit-other"


@pytest.fixture(scope="module")
def staff(slurm_cluster):
    top = users_top("kit-service-")
    home = top / STAFF
    setup = standin_site(home)
    services = top / "services"
    layer_file = home / "xdg" / "kit" / "sites" / "quest.yaml"
    layer = yaml.safe_load(layer_file.read_text())
    layer["paths"]["services_dir"] = str(services)
    layer["network"]["port_range"] = [21000, 21099]
    layer_file.write_text(yaml.safe_dump(layer))
    services.mkdir()
    give(STAFF, home, services)
    env = dict(setup["env"], HOME=str(home))
    # The labs use the same site layer (a site-wide file would do on a real cluster), their own state dir.
    yield {"top": top, "home": home, "env": env, "model": setup["model"], "services": services}
    for name in ("q", "o", "r"):
        kit_as(STAFF, env, "service", "down", name)
    shutil.rmtree(top, ignore_errors=True)


def lab_env(staff, user):
    return dict(staff["env"], KIT_STATE_DIR=str(staff["top"] / f"state-{user}"))


def up(staff, name, *args):
    r = kit_as(STAFF, staff["env"], "service", "up", name, str(staff["model"]), "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def service_json(staff, name) -> dict:
    return json.loads((staff["services"] / name / "service.json").read_text())


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def post(url, key, body, timeout=30):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


class Client(threading.Thread):
    """Calls the service by name, resolving it at each call (kit.client.connection.target, as
    `kit chat NAME` does), and remembers which job answered each request."""

    def __init__(self, staff, name):
        super().__init__(daemon=True)
        self.staff, self.name = staff, name
        self.answers: list[str] = []  # job ids that answered
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self):
        env = {k: v for k, v in self.staff["env"].items()}
        code = (
            "import json, sys, time, urllib.request\n"
            "from kit.client.connection import target\n"
            "from kit.errors import KitError\n"
            "svc = sys.argv[1]\n"
            "while True:\n"
            "    try:\n"
            "        url, key, model = target(svc)\n"
            "    except KitError as e:\n"
            "        print('down', str(e)[:80], flush=True); time.sleep(0.5); continue\n"
            "    job = json.load(open(sys.argv[2]))['job_id']\n"
            "    req = urllib.request.Request(url + '/v1/chat/completions', method='POST', data=json.dumps(\n"
            "        {'model': model, 'messages': [{'role': 'user', 'content': 'hi'}], 'max_tokens': 2}).encode(),\n"
            "        headers={'Authorization': 'Bearer ' + key, 'Content-Type': 'application/json'})\n"
            "    try:\n"
            "        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=30).read()\n"
            "        print('ok', job, flush=True)\n"
            "    except Exception as e:\n"
            "        print('fail', job, type(e).__name__, str(e)[:80], flush=True)\n"
            "    time.sleep(0.3)\n"
        )
        self.proc = subprocess.Popen(["runuser", "-u", STAFF, "--", "env", "-i",
                                      *[f"{k}={v}" for k, v in env.items()], sys.executable, "-c", code, self.name,
                                      str(self.staff["services"] / self.name / "service.json")],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in self.proc.stdout:
            word, _, rest = line.strip().partition(" ")
            if word == "ok":
                self.answers.append(rest)
            elif word == "fail":
                self.failures.append(rest)

    def stop(self):
        self.proc.terminate()
        self.join(10)


@pytest.fixture(scope="module")
def services(staff):
    """All three deployed at once (2-minute walltimes)."""
    q = up(staff, "q", "--gpu", "a100-80", "--time", "2", "--renew", "queue", "--renew-before", "60s")
    o = up(staff, "o", "--gpu", "a100-80", "--time", "2", "--renew", "overlap", "--renew-before", "80s")
    r = up(staff, "r", "--gpu", "h100", "--time", "10", "--renew", "off", "--max-restarts", "2")
    for name in ("q", "o", "r"):
        wait_for(lambda: service_json(staff, name)["state"] == "ready", 90, f"service {name} ready")
    return {"q": q, "o": o, "r": r, "started": time.monotonic()}


def test_keys_per_lab_revocation_and_usage(staff, services):
    for lab in (LAB_A, LAB_B):
        r = kit_as(STAFF, staff["env"], "service", "keys", "q", "add", lab)
        assert r.returncode == 0, r.stderr
    keys = staff["services"] / "q" / "keys"
    for lab, other in ((LAB_A, LAB_B), (LAB_B, LAB_A)):
        st = (keys / f"{lab}.key").stat()
        assert oct(st.st_mode & 0o777) == "0o640" and st.st_gid == pwd.getpwnam(lab).pw_gid
        assert as_user(lab, "cat", str(keys / f"{lab}.key")).returncode == 0
        assert as_user(other, "cat", str(keys / f"{lab}.key")).returncode != 0
        assert as_user(OTHER, "cat", str(keys / f"{lab}.key")).returncode != 0
    # Only hashes reach the job: no key in its script, log, record or service.json.
    key_a = (keys / f"{LAB_A}.key").read_text().strip()
    key_b = (keys / f"{LAB_B}.key").read_text().strip()
    for path in (staff["services"] / "q").rglob("*"):
        if path.is_file() and path.parent != keys:
            text = path.read_text(errors="replace")
            assert key_a not in text and key_b not in text, path

    # Each lab calls the service by name with `kit chat`; kit-other holds no key.
    sent = {LAB_A: 0, LAB_B: 0}
    # lab-a streams (its tokens then come from the stream's last chunk, which kit asks for).
    for lab in (LAB_A, LAB_B, LAB_A):
        stream = [] if lab == LAB_A else ["--no-stream"]
        r = kit_as(lab, lab_env(staff, lab), "chat", "q", "Hello", "--max-tokens", "3", *stream)
        assert r.returncode == 0 and r.stdout.strip(), r.stderr
        sent[lab] += 1
    # What a lab sees: the service's state and URL (read from the shared directory), no key in it.
    r = kit_as(LAB_B, lab_env(staff, LAB_B), "service", "status", "q", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "ready", r.stderr
    assert key_a not in r.stdout and key_b not in r.stdout
    r = kit_as(LAB_B, lab_env(staff, LAB_B), "service", "url", "q")
    assert r.returncode == 0 and r.stdout.strip() == service_json(staff, "q")["url"], r.stderr
    r = kit_as(OTHER, lab_env(staff, OTHER), "chat", "q", "Hello")
    assert r.returncode != 0 and "you hold no key" in r.stderr, r.stderr
    url = service_json(staff, "q")["url"]
    script = ("import sys, urllib.request, urllib.error\n"
              "for method, path in [('GET', '/health'), ('GET', '/info'), ('GET', '/v1/models'), ('POST', '/v1/chat/completions')]:\n"
              "    req = urllib.request.Request(sys.argv[1] + path, method=method, data=b'{}' if method == 'POST' else None,\n"
              "                                 headers={'Authorization': 'Bearer ' + sys.argv[2]})\n"
              "    try: code = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=30).status\n"
              "    except urllib.error.HTTPError as e: code = e.code\n"
              "    print(method, path, code)\n")
    out = as_user(OTHER, sys.executable, "-c", script, url, "guess").stdout
    assert out.split("\n")[:4] == ["GET /health 200", "GET /info 401", "GET /v1/models 401", "POST /v1/chat/completions 401"]

    # Revocation: refused within seconds, without a restart; the other lab still works.
    job_before = service_json(staff, "q")["job_id"]
    r = kit_as(STAFF, staff["env"], "service", "keys", "q", "revoke", LAB_A)
    assert r.returncode == 0, r.stderr
    revoked_at = time.monotonic()
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert post(url, key_a, body)[0] == 401
    assert time.monotonic() - revoked_at < 5
    assert post(url, key_b, body)[0] == 200
    sent[LAB_B] += 1
    assert service_json(staff, "q")["job_id"] == job_before
    assert not (keys / f"{LAB_A}.key").exists()

    # Usage per lab matches what was sent (the 401 is not counted: no key matched).
    r = kit_as(STAFF, staff["env"], "service", "usage", "q", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    per_lab = {}
    for row in rows:
        per_lab.setdefault(row["lab"], 0)
        per_lab[row["lab"]] += row["requests"]
        assert row["errors"] == 0 and row["prompt_tokens"] > 0 and row["generated_tokens"] > 0
    assert per_lab == {LAB_A: sent[LAB_A], LAB_B: sent[LAB_B]}
    r = kit_as(STAFF, staff["env"], "service", "keys", "q", "list", "--json")
    listed = json.loads(r.stdout)
    assert [row["lab"] for row in listed] == [LAB_B] and listed[0]["last_used"]


def test_bad_input_is_one_line_and_changes_nothing(staff, services):
    before = sorted(p.name for p in staff["services"].iterdir())
    for args, expected in [
        (("service", "status", "nope"), "unknown service 'nope'"),
        (("service", "keys", "q", "add", LAB_B), "already has a key"),
        (("service", "keys", "q", "revoke", "no-such-lab"), "has no key"),
        (("service", "keys", "q", "add", "x", "--group", "no-such-group"), "no such Unix group"),
        (("service", "up", "q", str(staff["model"])), "exists already"),
        (("service", "up", "new", str(staff["model"]), "--renew-before", "5m", "--time", "2"), "--renew-before 5m"),
    ]:
        r = kit_as(STAFF, staff["env"], *args)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("kit: warning")]
        assert len(lines) == 1 and lines[0].startswith("kit: error: ") and expected in lines[0], r.stderr
    # A lab may not manage keys; a services directory the user cannot write is refused.
    r = kit_as(LAB_A, lab_env(staff, LAB_A), "service", "keys", "q", "add", "sneaky", "--group", LAB_A)
    assert r.returncode != 0 and "not writable" in r.stderr, r.stderr
    r = kit_as(LAB_A, lab_env(staff, LAB_A), "service", "up", "mine", "Qwen/Qwen2.5-0.5B-Instruct")
    assert r.returncode != 0 and "services directory" in r.stderr and "not writable" in r.stderr, r.stderr
    assert sorted(p.name for p in staff["services"].iterdir()) == before


def test_an_engine_that_dies_is_restarted_then_the_job_requeues(staff, services):
    job = service_json(staff, "r")["job_id"]
    for restart in (1, 2, 3):
        pid = wait_for(lambda: _engine_pid(staff, "r"), 60, "the engine's pid")
        os.kill(pid, 9)
        if restart <= 2:
            wait_for(lambda: service_json(staff, "r")["restarts"] == restart
                     and service_json(staff, "r")["state"] == "ready", 60, f"restart {restart}")
    # Slurm queues the same job again (it starts it after its requeue delay, BeginTime ~2 min).
    st = wait_for(lambda: (lambda s: s if s["state"] == "requeued" and s["slurm"] == "PENDING" else None)(
        _status(staff, "r")), 60, "the requeued job")
    assert st["job_id"] == job and st["restarts"] == 2 and "killed by signal 9" in st["last_restart"]
    log = (staff["services"] / "r" / "job" / f"slurm-{job}.out").read_text()
    assert log.count("restarting TGI") == 2 and "killed by signal 9" in log
    assert "restart limit (2) reached" in log and "requeueing job" in log


def _engine_pid(staff, name):
    try:
        ep = json.loads((staff["services"] / name / "job" / "endpoint.json").read_text())
    except (OSError, ValueError):
        return None
    return ep.get("pid") if ep.get("state") == "ready" else None


def _status(staff, name):
    r = kit_as(STAFF, staff["env"], "service", "status", name, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_renewal_keeps_the_name_answering(staff, services):
    """queue: at least two renewals, every generation answers the client; overlap: one
    renewal with no failed request."""
    clients = {name: Client(staff, name) for name in ("q", "o")}
    for c in clients.values():
        c.start()
    wait_for(lambda: len(set(clients["o"].answers)) >= 2, 200, "an overlap renewal under the client")
    wait_for(lambda: len(set(clients["q"].answers)) >= 3, 600, "two queue renewals under the client")
    for c in clients.values():
        c.stop()
    assert clients["o"].failures == []  # overlap: the name never went dark
    st = _status(staff, "q")
    assert st["generation"] >= 3 and st["requests_last_hour"] > 0
    assert _status(staff, "o")["generation"] >= 2


def test_down_leaves_nothing_running_pending_or_reserved(staff, services):
    ids = set()
    for name in ("q", "o", "r"):
        r = kit_as(STAFF, staff["env"], "service", "down", name)
        assert r.returncode == 0, r.stderr
        ids.add(service_json(staff, name)["job_id"])
        assert service_json(staff, name)["state"] == "down"
    queue = subprocess.run(["squeue", "-h", "-u", STAFF, "-o", "%i %j %T"], capture_output=True, text=True).stdout
    assert queue.strip() == "", queue
    reserved = [p for p in Path("/tmp/kit-ports").glob("*/job") if p.read_text().strip() in ids]
    assert reserved == []
    r = kit_as(STAFF, staff["env"], "service", "url", "q")
    assert r.returncode != 0 and "not answering" in r.stderr


@pytest.mark.parametrize("site,account", [("quest", "p12345"), ("klc", "kellogg")])
@pytest.mark.parametrize("renew", ["queue", "overlap"])
def test_dry_run_prints_a_script_sbatch_accepts(slurm_cluster, tmp_path, site, account, renew):
    from kitrun import kit

    r = kit("service", "up", "shared-8b", "meta-llama/Llama-3.1-8B-Instruct", "--site", site, "--account", account,
            "--renew", renew, "--dry-run")
    assert r.code == 0, r.err
    assert "#SBATCH --requeue" in r.out and "#SBATCH --open-mode=append" in r.out
    assert "--key-hashes" in r.out and "--usage-file" in r.out
    script = tmp_path / "service.sbatch"
    script.write_text(r.out)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    proc = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "to start at" in proc.stderr, proc.stderr
