"""Serving on the real local Slurm: kit serve, wait, status, logs, connect, chat, bench, stop.

Only the container runtime and the engines are stand-ins (tests/standin/: a `singularity` that
runs the command on the host, and TGI/vLLM launchers that serve a tiny real model with the
engines' HTTP API and API-key rules). Templates, sbatch, the job script in Slurm, endpoint
discovery, health, the client and the API key handling are kit's own code, running for real.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kitrun import kit
from standin.site import cancel_jobs, standin_site

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def serve_env(slurm_cluster, tmp_path_factory):
    """A user layer over the packaged quest site that points the runtime at the stand-ins."""
    base = tmp_path_factory.mktemp("serving")
    setup = standin_site(base)
    yield setup
    cancel_jobs(base)  # leave nothing running


def run(serve_env, *args, **kw):
    return kit(*args, env=serve_env["env"], **kw)


def submit(serve_env, *args) -> dict:
    r = run(serve_env, "serve", str(serve_env["model"]), "--json", *args)
    assert r.code == 0, r.err
    return r.json()


@pytest.fixture(scope="module")
def tgi_job(serve_env):
    record = submit(serve_env, "--engine", "tgi", "--name", "tgi-one")
    r = run(serve_env, "wait", record["job_id"], "--timeout", "120")
    assert r.code == 0, r.err
    return dict(record, url=r.out.strip())


def key_of(serve_env, name: str) -> str:
    return (serve_env["base"] / "state" / "jobs" / name / "api_key").read_text().strip()


def post(url: str, body: dict, key: str | None):
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def test_wait_returns_the_ready_url(serve_env, tgi_job):
    assert tgi_job["url"].startswith("http://") and ":2" in tgi_job["url"]
    st = run(serve_env, "status", tgi_job["name"], "--json").json()
    assert st["state"] == "RUNNING" and st["ready"] is True and st["endpoint_state"] == "ready"
    assert st["url"] == tgi_job["url"] and st["nodes"] == "qgpu2001"  # 1x a100-40: the pcie node


def test_the_record_holds_script_plan_request_and_image(serve_env, tgi_job):
    job_dir = serve_env["base"] / "state" / "jobs" / "tgi-one"
    for name in ("job.sbatch", "plan.json", "request.json", "record.json", "endpoint.json", "api_key"):
        assert (job_dir / name).is_file(), name
    record = json.loads((job_dir / "record.json").read_text())
    assert record["image"] == str(serve_env["images"] / "tgi-3.3.7.sif") and record["engine_version"] == "3.3.7"
    assert json.loads((job_dir / "plan.json").read_text())["gpu_type"] == "a100-40"
    assert stat.S_IMODE((job_dir / "api_key").stat().st_mode) == 0o600


def test_chat_one_shot_streamed_and_not(serve_env, tgi_job):
    r = run(serve_env, "chat", tgi_job["job_id"], "Hello there", "--max-tokens", "8")
    assert r.code == 0 and r.out.strip(), r.err
    r = run(serve_env, "chat", tgi_job["name"], "Hello there", "--max-tokens", "8", "--no-stream")
    assert r.code == 0 and r.out.strip(), r.err


def test_chat_interactive_answers_each_question(serve_env, tgi_job):
    """Through the real job; that the history is resent is checked in test_client.py, where a
    recording server sees every request."""
    proc = subprocess.run([sys.executable, "-m", "kit.cli", "chat", tgi_job["job_id"], "--max-tokens", "4"],
                          input="first question\nsecond question\nexit\n", capture_output=True, text=True,
                          env=dict(os.environ, **serve_env["env"]), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len([line for line in proc.stdout.splitlines() if line.strip()]) >= 2


def test_requests_without_the_key_are_refused(serve_env, tgi_job):
    body = {"model": "tgi", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    url = tgi_job["url"] + "/v1/chat/completions"
    assert post(url, body, None)[0] == 401
    assert post(url, body, "wrong-key")[0] == 401
    status, answer = post(url, body, key_of(serve_env, "tgi-one"))
    assert status == 200 and answer["choices"][0]["message"]["content"] is not None
    r = run(serve_env, "chat", tgi_job["url"], "hi")  # a URL without --api-key-file
    assert r.code != 0 and "refused the API key (401)" in r.error_line


def sample_path(path: str) -> str:
    """A concrete request path for a table entry (`{name}` and `*rest` filled in)."""
    import re

    return re.sub(r"\{[^}/]+\}|\*\w+$", "x", path)


def every_route_through_the_job(url: str, engine: str, key: str) -> dict:
    """{(method, path): (status without a key, status with the job's key)} over the engine's whole
    route table (the pinned version's, tests/engine_routes.yaml)."""
    from standin import routes

    out = {}
    for route in routes.table(engine):
        method = "POST" if route.method == "ANY" else route.method
        path = sample_path(route.path)
        body = b"{}" if method in ("POST", "PUT", "PATCH") else None
        statuses = []
        for k in (None, key):
            req = urllib.request.Request(url + path, method=method, data=body, headers={"Content-Type": "application/json"})
            if k:
                req.add_header("Authorization", f"Bearer {k}")
            try:
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=60) as resp:
                    statuses.append(resp.status)
            except urllib.error.HTTPError as e:
                statuses.append(e.code)
        out[(method, path)] = tuple(statuses)
    return out


@pytest.mark.parametrize("engine", ["tgi", "vllm"])
def test_every_route_of_the_pinned_engine_but_health_needs_the_key(serve_env, tgi_job, engine):
    """Through the real job on Slurm: without the key, every route of the engine's real route
    table is refused (401) except GET /health; with it, none is."""
    if engine == "tgi":
        job, name = tgi_job, "tgi-one"
    else:
        record = submit(serve_env, "--engine", "vllm", "--name", "vllm-routes")
        r = run(serve_env, "wait", "vllm-routes", "--timeout", "120")
        assert r.code == 0, r.err
        job, name = dict(record, url=r.out.strip()), "vllm-routes"
    try:
        statuses = every_route_through_the_job(job["url"], engine, key_of(serve_env, name))
    finally:
        if engine == "vllm":
            run(serve_env, "stop", "vllm-routes")
    assert statuses.pop(("GET", "/health")) == (200, 200)
    assert len(statuses) > 10
    refused = {route: s for route, s in statuses.items() if s[0] != 401}
    assert refused == {}, refused
    let_through = {route: s for route, s in statuses.items() if s[1] == 401}
    assert let_through == {}, let_through


def test_chat_by_url_with_a_key_file(serve_env, tgi_job):
    key_file = serve_env["base"] / "state" / "jobs" / "tgi-one" / "api_key"
    r = run(serve_env, "chat", tgi_job["url"], "hi", "--api-key-file", str(key_file), "--max-tokens", "4")
    assert r.code == 0 and r.out.strip()


def test_the_key_is_absent_from_script_slurm_and_logs(serve_env, tgi_job):
    key = key_of(serve_env, "tgi-one")
    job_dir = serve_env["base"] / "state" / "jobs" / "tgi-one"
    assert key not in (job_dir / "job.sbatch").read_text()
    shown = subprocess.run(["scontrol", "show", "job", "-dd", tgi_job["job_id"]], capture_output=True, text=True)
    assert shown.returncode == 0 and key not in shown.stdout
    batch = subprocess.run(["scontrol", "write", "batch_script", tgi_job["job_id"], "-"], capture_output=True, text=True)
    # scontrol 22.05 exits 0 even when it cannot fetch the script: the script itself must be there
    assert batch.returncode == 0 and "#SBATCH --job-name=tgi-one" in batch.stdout, batch.stderr
    assert key not in batch.stdout
    run(serve_env, "chat", tgi_job["job_id"], "hello", "--max-tokens", "4")
    assert key not in (job_dir / f"slurm-{tgi_job['job_id']}.out").read_text()
    assert key not in Path(serve_env["env"]["KIT_STANDIN_LOG"]).read_text()
    for name in ("record.json", "plan.json", "request.json", "endpoint.json"):
        assert key not in (job_dir / name).read_text()


def engine_argv(serve_env, job_id: str) -> list[str]:
    """The runtime call that started the job's engine (its private run dir names the job)."""
    calls = [json.loads(line) for line in Path(serve_env["env"]["KIT_STANDIN_LOG"]).read_text().splitlines()]
    return next(c["argv"] for c in calls if any(a.startswith(f"/tmp/kit-run-{job_id}.") for a in c["argv"])
                and ("--model-id" in c["argv"] or "serve" in c["argv"]))


def job_ports(serve_env, job: dict) -> set[str]:
    argv = engine_argv(serve_env, job["job_id"])
    return {job["url"].rsplit(":", 1)[1]} | {argv[argv.index(f) + 1] for f in ("--port", "--prometheus-port", "--master-port")}


def test_the_engine_gets_the_pinned_flags_and_per_job_ports(serve_env, tgi_job):
    argv = engine_argv(serve_env, tgi_job["job_id"])
    assert argv[1] == "run" and "--nv" in argv and "--cleanenv" in argv
    public = tgi_job["url"].rsplit(":", 1)[1]
    assert argv[argv.index("--hostname") + 1] == "127.0.0.1"  # the engine: on this node only
    assert argv[argv.index("--port") + 1] != public  # the guard has the public port
    assert argv[argv.index("--shard-uds-path") + 1].startswith(f"/tmp/kit-run-{tgi_job['job_id']}.")
    ports = job_ports(serve_env, tgi_job)
    assert len(ports) == 4 and all(20000 <= int(p) <= 20009 for p in ports)
    assert f"{serve_env['model']}:{serve_env['model']}:ro" in argv  # the model dir, bound read-only


def test_connect_prints_the_sites_tunnel(serve_env, tgi_job):
    r = run(serve_env, "connect", tgi_job["job_id"])
    port = tgi_job["url"].rsplit(":", 1)[1]
    assert r.code == 0
    assert f"-L {port}:localhost:{port}" in r.out and "login.quest.northwestern.edu" in r.out and "qgpu2001" in r.out


def test_connect_open_runs_ssh(serve_env, tgi_job, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ssh").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/ssh.args\n")
    (fake / "ssh").chmod(0o755)
    env = dict(serve_env["env"], PATH=f"{fake}:{serve_env['env']['PATH']}")
    r = kit("connect", tgi_job["job_id"], "--open", env=env)
    assert r.code == 0, r.err
    assert "qgpu2001" in (tmp_path / "ssh.args").read_text()


def test_a_second_job_on_the_same_node_gets_another_port(serve_env, tgi_job):
    second = submit(serve_env, "--engine", "tgi", "--name", "tgi-two")
    r = run(serve_env, "wait", second["job_id"], "--timeout", "120")
    assert r.code == 0, r.err
    st = run(serve_env, "status", "tgi-two", "--json").json()
    assert st["nodes"] == "qgpu2001"  # the pcie node has 2 GPUs: both jobs land there
    assert r.out.strip() != tgi_job["url"]
    ports = job_ports(serve_env, tgi_job) | job_ports(serve_env, dict(second, url=r.out.strip()))
    assert len(ports) == 8  # public, engine, Prometheus and master ports of both jobs are distinct
    assert run(serve_env, "stop", "tgi-two").code == 0


def test_bench_reports_latency_and_throughput(serve_env, tgi_job):
    r = run(serve_env, "bench", tgi_job["job_id"], "--requests", "6", "--concurrency", "3", "--max-tokens", "8", "--json")
    assert r.code == 0, r.err
    result = r.json()
    assert result["ok"] == 6 and result["errors"] == 0
    assert result["ttft_p50_s"] > 0 and result["output_tokens"] > 0 and result["tokens_per_s"] > 0


def test_logs_and_jobs(serve_env, tgi_job):
    r = run(serve_env, "logs", tgi_job["job_id"])
    assert r.code == 0 and "kit-job: ready" in r.out
    tail = run(serve_env, "logs", tgi_job["job_id"], "-n", "3")
    assert 0 < len(tail.out.splitlines()) <= 3
    table = run(serve_env, "jobs", "--json").json()
    assert any(row["name"] == "tgi-one" and row["state"] == "RUNNING" for row in table)


def test_stop_leaves_nothing_running(serve_env, tgi_job):
    job_dir = serve_env["base"] / "state" / "jobs" / "tgi-one"
    endpoint = json.loads((job_dir / "endpoint.json").read_text())
    r = run(serve_env, "stop", tgi_job["job_id"])
    assert r.code == 0 and "CANCELLED" in r.out
    deadline = time.time() + 30
    while time.time() < deadline and json.loads((job_dir / "endpoint.json").read_text())["state"] != "stopped":
        time.sleep(0.5)
    assert json.loads((job_dir / "endpoint.json").read_text())["state"] == "stopped"
    pid = endpoint["pid"]
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/status").read_text().split("State:")[1][:4]
    for port in job_ports(serve_env, tgi_job):  # nothing listens, no reservation is left
        assert subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode != 0
        assert Path("/tmp/kit-ports").is_dir() and not Path(f"/tmp/kit-ports/{port}").exists()
    assert not list(Path("/tmp").glob(f"kit-run-{tgi_job['job_id']}.*"))  # the private run dir is gone
    st = run(serve_env, "status", tgi_job["job_id"], "--json").json()
    assert st["state"] == "CANCELLED" and st["ready"] is False


def test_vllm_job_end_to_end(serve_env):
    record = submit(serve_env, "--engine", "vllm", "--name", "vllm-one")
    r = run(serve_env, "wait", "vllm-one", "--timeout", "120")
    assert r.code == 0, r.err
    body = {"model": str(serve_env["model"].name), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert post(r.out.strip() + "/v1/chat/completions", body, None)[0] == 401
    chat = run(serve_env, "chat", "vllm-one", "Hello", "--max-tokens", "6")
    assert chat.code == 0 and chat.out.strip(), chat.err
    calls = [json.loads(line) for line in Path(serve_env["env"]["KIT_STANDIN_LOG"]).read_text().splitlines()]
    argv = next(c["argv"] for c in calls if "vllm" in c["argv"] and str(serve_env["model"]) in c["argv"])
    assert argv[1] == "exec" and argv[argv.index("--tensor-parallel-size") + 1] == "1"
    assert run(serve_env, "stop", record["job_id"]).code == 0


def test_a_job_that_dies_at_start_fails_wait_fast(serve_env, tmp_path):
    import shutil

    doomed = tmp_path / "doomed-model"
    shutil.copytree(serve_env["model"], doomed)
    r = kit("serve", str(doomed), "--json", "--name", "doomed", env=serve_env["env"])
    assert r.code == 0, r.err
    shutil.rmtree(doomed)  # the model directory vanishes before the job starts
    start = time.monotonic()
    w = run(serve_env, "wait", "doomed", "--timeout", "120")
    assert w.code == 4 and time.monotonic() - start < 30
    assert "ended before it was ready" in w.err and "model (config.json) not found" in w.err
    assert "  | " in w.err  # the log tail


def test_an_engine_that_fails_to_load_fails_wait_fast(serve_env, tmp_path):
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(serve_env["model"], broken)
    r = kit("serve", str(broken), "--json", "--name", "broken", env=serve_env["env"])
    assert r.code == 0, r.err
    (broken / "config.json").write_text("{not json")  # the engine starts, then cannot load it
    w = run(serve_env, "wait", "broken", "--timeout", "120")
    assert w.code == 4 and "exited with status" in w.err and "before it was ready" in w.err
    endpoint = serve_env["base"] / "state" / "jobs" / "broken" / "endpoint.json"
    deadline = time.time() + 30  # `kit wait` returns at the failure; the job then cleans up
    while time.time() < deadline and json.loads(endpoint.read_text())["state"] == "stopping":
        time.sleep(0.2)
    assert json.loads(endpoint.read_text())["state"] == "failed"


def test_nothing_is_submitted_on_bad_input(serve_env, tmp_path):
    def count_jobs():  # this test's jobs: those working in its state dir (others may share the cluster)
        out = subprocess.run(["squeue", "-h", "-o", "%Z"], capture_output=True, text=True).stdout
        return sum(line.startswith(str(serve_env["base"])) for line in out.splitlines())

    jobs_dir = serve_env["base"] / "state" / "jobs"
    before = (count_jobs(), sorted(p.name for p in jobs_dir.iterdir()))
    model = str(serve_env["model"])
    cases = [
        (["serve", model, "--time", "3-00:00:00"], "over the gengpu partition's limit of 2-00:00:00"),
        (["serve", model, "--time", "soon"], "--time soon: not a Slurm time"),
        (["serve", model, "--account", "nope"], "does not look like an account on quest"),
        (["serve", model, "--adapter", str(tmp_path)], "no adapter_config.json"),
        (["serve", model, "--name", "tgi-one"], "a kit job of that name exists already"),
    ]
    for args, expected in cases:
        r = run(serve_env, *args)
        assert r.code != 0 and expected in r.error_line, (args, r.err)
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = kit("serve", model, "--dry-run", env=dict(serve_env["env"], KIT_STATE_DIR=str(blocker / "state")))
    assert r.code != 0 and "state dir" in r.error_line and "cannot create" in r.error_line
    assert (count_jobs(), sorted(p.name for p in jobs_dir.iterdir())) == before


def test_dry_run_prints_the_script_and_submits_nothing(serve_env):
    jobs_dir = serve_env["base"] / "state" / "jobs"
    before = sorted(p.name for p in jobs_dir.iterdir())
    r = run(serve_env, "serve", str(serve_env["model"]), "--dry-run", "--engine", "vllm")
    assert r.code == 0 and r.out.startswith("#!/bin/bash\n#SBATCH --job-name=vllm-tiny-chat-")
    assert sorted(p.name for p in jobs_dir.iterdir()) == before


def test_unknown_and_foreign_jobs(serve_env):
    r = run(serve_env, "status", "999999")
    assert r.code != 0 and "unknown job 999999" in r.error_line
    r = run(serve_env, "stop", "no-such-name")
    assert r.code != 0 and "unknown job 'no-such-name'" in r.error_line
    foreign = subprocess.run(["sbatch", "--parsable", "-p", "short", "-o", "/dev/null", "--wrap", "sleep 30"],
                             capture_output=True, text=True)
    job_id = foreign.stdout.strip()
    try:
        r = run(serve_env, "status", job_id)
        assert r.code != 0 and f"job {job_id} is not a kit job" in r.error_line
    finally:
        subprocess.run(["scancel", job_id])


def test_no_slurm_on_path(serve_env, tmp_path):
    r = kit("serve", str(serve_env["model"]), env=dict(serve_env["env"], PATH=str(tmp_path)))
    assert r.code != 0 and "'sbatch' not found on PATH" in r.error_line
    r = kit("status", "999999", env=dict(serve_env["env"], PATH=str(tmp_path)))
    assert r.code != 0 and "not found on PATH" in r.error_line
    # a job seen ended has its final state in its record: Slurm is not asked again
    r = kit("status", "tgi-one", "--json", env=dict(serve_env["env"], PATH=str(tmp_path)))
    assert r.code == 0 and r.json()["state"] == "CANCELLED", r.err


# --- Ctrl-C or SIGTERM during submit --------------------------------------------------------------

SLOW_SBATCH = {  # a real sbatch made slow: it queues the job, then takes its time to exit
    "queues-then-sleeps-1": 'out=$("{real}" "$@"); rc=$?; touch "{mark}"; printf "%s\\n" "$out"; sleep 1; exit $rc',
    "queues-then-hangs": 'out=$("{real}" "$@"); rc=$?; touch "{mark}"; printf "%s\\n" "$out"; sleep 60; exit $rc',
    "hangs-before-queueing": 'touch "{mark}"; sleep 60; exec "{real}" "$@"',
}


def interrupt_submit(serve_env, tmp_path, sbatch_body: str, name: str, sig: int) -> tuple[int, str, Path]:
    """`kit serve` with a slow sbatch, interrupted by ``sig`` once sbatch has started."""
    import shutil
    import signal

    bin_dir, mark = tmp_path / "slow-bin", tmp_path / "sbatch-started"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/bash\n" + sbatch_body.format(real=shutil.which("sbatch"), mark=mark) + "\n")
    (bin_dir / "sbatch").chmod(0o755)
    env = dict(os.environ, **serve_env["env"])
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    proc = subprocess.Popen([sys.executable, "-m", "kit.cli", "serve", str(serve_env["model"]), "--name", name],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not mark.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err, serve_env["base"] / "state" / "jobs" / name


def queued_ids(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-n", name, "-o", "%i"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.parametrize(
    ("sbatch", "sig"),
    [("queues-then-sleeps-1", "SIGINT"), ("queues-then-hangs", "SIGTERM"), ("queues-then-hangs", "SIGINT")],
)
def test_an_interrupted_submit_keeps_the_record_of_a_queued_job(serve_env, tmp_path, sbatch, sig):
    """sbatch queued the job: its record stays, with the job id (from sbatch when it still answers,
    else from Slurm by the job's name and directory), and the command says so."""
    import signal

    name = f"interrupted-{sbatch}-{sig}-{os.urandom(3).hex()}".lower()  # Slurm remembers earlier runs' jobs
    code, err, job_dir = interrupt_submit(serve_env, tmp_path, SLOW_SBATCH[sbatch], name, getattr(signal, sig))
    ids = queued_ids(name)
    try:
        assert len(ids) == 1, (ids, err)
        assert code == 130 and f"sbatch had queued job {ids[0]} ({name})" in err and "Traceback" not in err, err
        record = json.loads((job_dir / "record.json").read_text())
        assert record["job_id"] == ids[0] and record["requeue"] is False
        assert (job_dir / "api_key").is_file() and (job_dir / "job.sbatch").is_file()
    finally:
        subprocess.run(["scancel", *ids])


def test_an_interrupted_submit_that_queued_nothing_leaves_nothing(serve_env, tmp_path):
    import signal

    name = f"never-queued-{os.urandom(3).hex()}"
    slow = SLOW_SBATCH["hangs-before-queueing"]
    code, err, job_dir = interrupt_submit(serve_env, tmp_path, slow, name, signal.SIGINT)
    assert code == 130 and f"nothing was queued for {name}" in err, err
    assert not job_dir.exists() and queued_ids(name) == []

