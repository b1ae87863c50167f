"""The RAG stack job (`kit rag up`).

Rendered: golden files for each kind of stack (TEI on a GPU, TEI's CPU image where the driver cannot
run the GPU one, Weaviate alone, a generator in the job), Weaviate's and TEI's settings against the
research notes and TEI's pinned flags, the key kept out of the script, and `sbatch --test-only` on the
local Slurm that mimics Quest and KLC.

Run for real on that Slurm: only the container runtime and the servers are stand-ins (tests/standin/:
`weaviate` with Weaviate's environment, listeners, routes and API-key rules; `text-embeddings-router`
computing real all-MiniLM-L6-v2 embeddings; TGI serving a tiny model), started from the images' own
runscripts. kit's template, guards, keys, ports, endpoint.json, readiness, failure handling, `kit wait`,
`kit rag status|down` and `kit stop` are kit's own code, as on a cluster.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from kitrun import kit

from kit.sites import load_site

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
SITES = {"quest": "p12345", "klc": "kellogg"}
EMBED = "/models/all-MiniLM-L6-v2"
VARIANTS = ["gpu", "tei-cpu", "cpu", "model"]


@pytest.fixture
def fixed_env(monkeypatch, tmp_path, isolated_kit_env):
    monkeypatch.setenv("USER", "labuser")
    monkeypatch.setenv("HOME", "/home/labuser")
    monkeypatch.setenv("KIT_STATE_DIR", "/home/labuser/.kit")
    monkeypatch.setattr("kit.rag.stack.ensure_writable", lambda root: None)
    monkeypatch.setattr("kit.jobs.serve.ensure_writable", lambda root: None)
    model = tmp_path / "embed"
    model.mkdir()
    (model / "config.json").write_text("{}")
    monkeypatch.setattr("kit.rag.embed.default_model_dir", lambda: model)
    return {"model": str(model), "xdg": isolated_kit_env / "xdg"}


def newer_driver(env, site_name: str) -> None:
    """A site layer whose GPU driver runs CUDA 12.9, the TEI GPU image's."""
    sites = env["xdg"] / "kit" / "sites"
    sites.mkdir(parents=True, exist_ok=True)
    (sites / f"{site_name}.yaml").write_text(yaml.safe_dump({"driver": {"cuda_max": "12.9"}}))


def render(env, site_name: str, variant: str, **options):
    from kit.rag.stack import build

    if variant == "gpu":
        newer_driver(env, site_name)
    site = load_site(site_name).site
    model = plan = None
    if variant == "model":
        from kit.models import catalog
        from kit.models.resolve import from_catalog
        from kit.plan import plan_serve

        model = from_catalog("meta-llama/Llama-3.1-8B-Instruct", catalog.lookup("meta-llama/Llama-3.1-8B-Instruct"))
        plan = plan_serve(model, site, engine="tgi")
    args = dict(account=SITES[site_name], time=None, name="rag-golden", cpu=variant == "cpu", partition=None, gpu=None,
                embed_model=None, generator=None, data_dir=None, ready_timeout_s=1800, request={}, model=model,
                plan=plan)
    job = build(site, **dict(args, **options))
    return job, job.script.replace(env["model"], EMBED)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("site_name", SITES)
def test_golden_stack_scripts(fixed_env, site_name, variant):
    _, script = render(fixed_env, site_name, variant)
    golden = GOLDEN / f"rag-stack-{variant}-{site_name}.sbatch"
    if os.environ.get("KIT_UPDATE_GOLDEN"):
        golden.write_text(script)
    assert script == golden.read_text(), f"rendered script differs from {golden} (KIT_UPDATE_GOLDEN=1 rewrites it)"
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_weaviate_settings_and_key(fixed_env):
    from kit.rag.stack import node_name

    job, script = render(fixed_env, "quest", "gpu")
    data = "/projects/p12345/kit/rag/rag-golden"
    node = node_name(data)
    for line in [f"export SINGULARITYENV_CLUSTER_HOSTNAME={node}",
                 "export SINGULARITYENV_RAFT_BOOTSTRAP_EXPECT=1",
                 f"export SINGULARITYENV_RAFT_JOIN={node}:\"$KIT_RAFT_RPC_PORT\"",
                 "export SINGULARITYENV_AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED=false",
                 "export SINGULARITYENV_AUTHENTICATION_APIKEY_ENABLED=true",
                 "export SINGULARITYENV_DISABLE_TELEMETRY=true",
                 "export SINGULARITYENV_DEFAULT_VECTORIZER_MODULE=none",
                 "export SINGULARITYENV_GO_PROFILING_DISABLE=true",
                 "export SINGULARITYENV_CLUSTER_BIND_ADDR=127.0.0.1",
                 "export SINGULARITYENV_GOMEMLIMIT=52428MiB",  # 80 % of the job's 64 GiB
                 'export SINGULARITYENV_AUTHENTICATION_APIKEY_ALLOWED_KEYS="$(<"$KIT_API_KEY_FILE")"',
                 f"--bind {data}:/var/lib/weaviate"]:
        assert line in script, line
    assert '--key-file "$KIT_API_KEY_FILE"' in script and "--api-key" not in script
    assert job.record["data_dir"] == data and job.record["weaviate_hostname"] == node
    assert job.record["images"] == ["weaviate", "tei"] and {"guard.py", "keys.py", "usage.py"} <= set(job.files)
    for port in ("WEAVIATE_PORT", "GRPC_PORT", "GOSSIP_PORT", "DATA_PORT", "RAFT_PORT", "RAFT_RPC_PORT", "TEI_PORT",
                 "TEI_ENGINE_PORT", "TEI_METRICS_PORT"):
        assert f"kit_reserve_port; KIT_{port}=$KIT_RESERVED" in script
    # the node name follows the data, never the job: another job on the same data reopens its Raft state
    other, _ = render(fixed_env, "quest", "gpu", name="another-name", data_dir=data)
    assert other.record["weaviate_hostname"] == node


def tei_command(script: str) -> list[str]:
    start = script.index('exec "$KIT_RUNTIME" run', script.index("starting text-embeddings-inference"))
    end = script.index(") > \"$KIT_RUN_DIR/tei.log\"", start)
    return shlex.split(script[start:end].replace("\\\n", " "))


@pytest.mark.parametrize("variant", ["gpu", "tei-cpu", "model"])
def test_tei_flags_exist_in_the_pinned_version(fixed_env, variant):
    """Every flag kit gives TEI is one of text-embeddings-router 1.9.3's (tests/engine_flags.yaml), and
    the stand-in, which parses with that flag set, takes the whole command line."""
    from standin import flags

    job, script = render(fixed_env, "quest", variant)
    argv = tei_command(script)
    assert ("--nv" in argv) == (variant == "gpu") and "--cleanenv" in argv
    image = next(i for i, a in enumerate(argv) if a.endswith(".sif"))
    assert Path(argv[image]).name == ("tei-1.9.3.sif" if variant == "gpu" else "tei-cpu-1.9.3.sif")
    args, positional = flags.parse("tei", argv[image + 1:], {})
    assert positional == [] and args["--hostname"] == "127.0.0.1" and args["--model-id"] == "/models/embed"
    assert args["--uds-path"].startswith("$KIT_RUN_DIR/") and args["--auto-truncate"] is True
    assert job.record["tei_device"] == ("gpu" if variant == "gpu" else "cpu")


def test_the_cuda_check_picks_where_tei_runs(fixed_env):
    """TEI's GPU image needs CUDA 12.9 (PTX the driver compiles): on Quest's 12.8 driver kit runs its CPU
    image on the CPU partition, or refuses when a GPU was asked for; beside a generator TEI is on the CPU."""
    job, _ = render(fixed_env, "quest", "tei-cpu")
    assert job.plan["partition"] == "short" and job.plan["gpus"] == 0 and job.record["tei_device"] == "cpu"
    assert any("needs CUDA 12.9" in w and "TEI runs its CPU image (tei-cpu)" in w for w in job.warnings)
    assert "#SBATCH --gres" not in job.script and "#SBATCH --cpus-per-task=8" in job.script
    res = kit("rag", "up", "--site", "quest", "--account", "p12345", "--gpu", "a100-40", "--dry-run")
    assert res.code != 0 and "--gpu a100-40: TEI 1.9.3 on a GPU" in res.error_line
    assert "up to CUDA 12.8" in res.error_line and "minor-version compatibility does not cover" in res.error_line
    job, _ = render(fixed_env, "quest", "gpu")
    assert job.plan["gpu_type"] == "a100-40" and job.record["tei_device"] == "gpu" and not job.warnings
    job, script = render(fixed_env, "quest", "model")
    assert job.record["tei_device"] == "cpu" and job.record["images"] == ["tgi", "weaviate", "tei-cpu"]
    assert job.plan["gpus"] >= 1 and job.record["generator_engine"] == "tgi"


def test_a_generator_in_the_job_is_the_serving_jobs_own(fixed_env):
    """--model: the engine's serving template, its planned flags and GPUs; the stack's services beside it."""
    from serving import engine_command

    job, script = render(fixed_env, "quest", "model")
    argv = engine_command(script)
    assert "--model-id" in argv and argv[argv.index("--num-shard") + 1] == str(job.plan["gpus"])
    assert script.count("kit-python \"$KIT_JOB_DIR/guard.py\"") == 2  # the generator's guard and TEI's
    assert job.record["task"] == "rag-stack" and job.record["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert "export SINGULARITYENV_GOMEMLIMIT=" in script  # Weaviate's share is smaller beside a generator
    mem = int(next(line for line in script.splitlines() if line.startswith("#SBATCH --mem=")).split("=")[1][:-1])
    share = int(script.split("SINGULARITYENV_GOMEMLIMIT=")[1].split("MiB")[0])
    assert share == int(mem * 1024 * 0.5)


def written_endpoint(script: str, tmp_path: Path) -> dict:
    """What the script's own kit_write_endpoint writes, run in bash with every port set."""
    start = script.index("kit_write_endpoint() {")
    function = script[start:script.index("\n}\n", start) + 3]
    ports = "".join(f"KIT_{name}={21000 + n}\n" for n, name in enumerate(
        ["PORT", "WEAVIATE_PORT", "GRPC_PORT", "TEI_PORT"]))
    (tmp_path / "ep").mkdir(exist_ok=True)
    run = f"set -u\nKIT_JOB_DIR={tmp_path / 'ep'}\nKIT_STARTED=now\n{ports}{function}kit_write_endpoint ready\n"
    assert subprocess.run(["bash", "-c", run]).returncode == 0
    return json.loads((tmp_path / "ep" / "endpoint.json").read_text())


@pytest.mark.parametrize("variant", VARIANTS)
def test_endpoint_json_lists_every_service(fixed_env, tmp_path, variant):
    job, script = render(fixed_env, "quest", variant)
    ep = written_endpoint(script, tmp_path)
    expected = {"gpu": {"weaviate", "tei"}, "tei-cpu": {"weaviate", "tei"}, "cpu": {"weaviate"},
                "model": {"weaviate", "tei", "generator"}}[variant]
    assert ep["state"] == "ready" and ep["engine"] == "rag-stack" and set(ep["services"]) == expected
    assert ep["services"]["weaviate"] == {"port": 21001, "grpc_port": 21002}
    if variant == "model":
        assert ep["services"]["generator"] == {"port": 21000, "engine": "tgi", "model": "meta-llama/Llama-3.1-8B-Instruct"}
    if "tei" in expected:
        assert ep["services"]["tei"] == {"port": 21003, "model": "all-MiniLM-L6-v2",
                                         "device": "gpu" if variant == "gpu" else "cpu"}
    assert ep["health"] == ("/v1/.well-known/ready" if variant == "cpu" else "/health")


def test_an_existing_serve_job_as_the_generator(fixed_env, monkeypatch, tmp_path):
    """--generator JOB: recorded and listed in endpoint.json; `kit rag ask --stack` then asks that job."""
    monkeypatch.setenv("KIT_STATE_DIR", str(tmp_path / "state"))
    for name, task in (("tiny-chat-demo", "serve"), ("some-training", "finetune")):
        folder = tmp_path / "state" / "jobs" / name
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps({"name": name, "job_id": None, "task": task}))
    job, script = render(fixed_env, "quest", "tei-cpu", generator="tiny-chat-demo")
    assert job.record["generator"] == "tiny-chat-demo" and "generator_engine" not in job.record
    assert written_endpoint(script, tmp_path)["services"]["generator"] == {"job": "tiny-chat-demo"}
    with pytest.raises(Exception, match="--generator some-training: not a kit serve job"):
        render(fixed_env, "quest", "tei-cpu", generator="some-training")


@pytest.mark.slurm
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("site_name", SITES)
def test_sbatch_test_only_accepts_the_stack(slurm_cluster, fixed_env, tmp_path, site_name, variant):
    _, script = render(fixed_env, site_name, variant)
    path = tmp_path / "stack.sbatch"
    path.write_text(script)
    proc = subprocess.run(["sbatch", "--test-only", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "to start at" in proc.stderr


def test_stack_bad_input(tmp_path):
    res = kit("rag", "ask", "What?", "--stack", "no-such-job", "--no-generate")
    assert res.code != 0 and "no-such-job" in res.error_line
    res = kit("rag", "up", "--site", "quest", "--account", "p12345", "--gpu", "v100", "--dry-run")
    assert res.code != 0 and "--gpu v100: gengpu has" in res.error_line
    res = kit("rag", "down", "nothing-here")
    assert res.code != 0 and "nothing-here" in res.error_line
    up = ("rag", "up", "--site", "quest", "--account", "p12345", "--dry-run")
    res = kit(*up, "--quantize", "fp8")
    assert res.code != 0 and "--quantize: sizes the generator; only with --model" in res.error_line
    res = kit(*up, "--model", "meta-llama/Llama-3.1-8B-Instruct", "--generator", "some-job")
    assert res.code != 0 and "--model and --generator: give one" in res.error_line
    res = kit(*up, "--model", "meta-llama/Llama-3.1-8B-Instruct", "--cpu")
    assert res.code != 0 and "--cpu: Weaviate alone runs no generator" in res.error_line
    res = kit(*up, "--cpu", "--gpu", "h100")
    assert res.code != 0 and "--gpu h100: a --cpu stack has no GPU" in res.error_line
    res = kit(*up, "--embed-model", str(tmp_path))
    assert res.code != 0 and "--embed-model" in res.error_line and "no config.json" in res.error_line


# --- the stack job on the local Slurm ----------------------------------------------------------------

STACKS = {  # name: kit rag up arguments (GPU tiers off the a100-40 node the serving tests use most)
    "stack-gpu": ["--gpu", "h100"],
    "stack-cpu": ["--cpu"],
    "stack-model": ["--model", "MODEL", "--gpu", "a100-80"],
    "stack-doomed": ["--gpu", "h100"],  # its TEI exits at start (the file is there before it starts)
}


@pytest.fixture(scope="module")
def stack(slurm_cluster, tmp_path_factory):
    """The stand-in site (a GPU driver of CUDA 12.9, so TEI's GPU image runs) and three stacks submitted
    at once: TEI on a GPU, Weaviate alone, and a generator with TEI on the CPU. Each job gets its own
    KIT_STANDIN_EXIT_DIR (a file named after a service there makes that service exit)."""
    from standin.site import cancel_jobs, standin_site

    base = tmp_path_factory.mktemp("stack")
    setup = standin_site(base, layer={"driver": {"cuda_max": "12.9"}, "network": {"port_range": [21000, 21999]},
                                      "paths": {"project": str(base / "project")}})
    setup["exit"] = {}
    for name, args in STACKS.items():
        exit_dir = base / "exit" / name
        exit_dir.mkdir(parents=True)
        setup["exit"][name] = exit_dir
        if name == "stack-doomed":
            (exit_dir / "tei").touch()
        args = [str(setup["model"]) if a == "MODEL" else a for a in args]
        r = kit("rag", "up", "--name", name, "--json", *args, env=dict(setup["env"], KIT_STANDIN_EXIT_DIR=str(exit_dir)))
        assert r.code == 0, r.err
    yield setup
    cancel_jobs(base)  # leave nothing running


def run(stack, *args, **kw):
    return kit(*args, env=stack["env"], **kw)


def job_dir(stack, name: str) -> Path:
    return stack["base"] / "state" / "jobs" / name


def endpoint(stack, name: str) -> dict:
    return json.loads((job_dir(stack, name) / "endpoint.json").read_text())


def key_of(stack, name: str) -> str:
    return (job_dir(stack, name) / "api_key").read_text().strip()


def ready(stack, name: str) -> str:
    r = run(stack, "wait", name, "--timeout", "240")
    assert r.code == 0, r.err + log_of(stack, name)
    return r.out.strip()


def log_of(stack, name: str) -> str:
    logs = list(job_dir(stack, name).glob("slurm-*.out"))
    return logs[0].read_text() if logs else ""


def request(url: str, method: str = "GET", key: str | None = None, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def every_route(base_url: str, engine: str, key: str) -> dict:
    """{(method, path): (status without a key, status with it)} over the server's pinned route table."""
    import re

    from standin import routes

    out = {}
    for route in routes.table(engine):
        method = "POST" if route.method == "ANY" else route.method
        path = re.sub(r"\{[^}/]+\}|\*\w+$", "x", route.path)
        body = {} if method in ("POST", "PUT", "PATCH") else None
        out[(method, path)] = (request(base_url + path, method, None, body)[0],
                               request(base_url + path, method, key, body)[0])
    return out


def runtime_calls(stack) -> list[list[str]]:
    return [json.loads(line)["argv"] for line in Path(stack["env"]["KIT_STANDIN_LOG"]).read_text().splitlines()]


def service_argv(stack, name: str, program: str) -> list[str]:
    """The runtime call of job NAME that ran PROGRAM's image (by the image file's name): the one that
    names the job's private run directory, or its Weaviate data."""
    job_id = endpoint(stack, name)["job_id"]
    data = json.loads((job_dir(stack, name) / "record.json").read_text())["data_dir"]
    return next(argv for argv in runtime_calls(stack)
                if any(a.startswith((f"/tmp/kit-run-{job_id}.", f"{data}:")) for a in argv)
                and any(a.endswith(".sif") and Path(a).name.startswith(program) for a in argv)
                and "kit-python" not in argv)


@pytest.mark.slurm
def test_the_gpu_stack_is_ready_with_every_service(stack):
    url = ready(stack, "stack-gpu")
    ep = endpoint(stack, "stack-gpu")
    services = ep["services"]
    assert ep["state"] == "ready" and set(services) == {"weaviate", "tei"}
    assert services["tei"] == {"port": ep["port"], "model": "all-MiniLM-L6-v2", "device": "gpu"}
    assert url == f"http://{ep['host']}:{services['tei']['port']}" and ep["health"] == "/health"
    ports = {services["weaviate"]["port"], services["weaviate"]["grpc_port"], services["tei"]["port"]}
    assert len(ports) == 3 and all(21000 <= p <= 21999 for p in ports)
    st = run(stack, "status", "stack-gpu", "--json").json()
    assert st["state"] == "RUNNING" and st["ready"] and st["nodes"] == "qgpu3001"  # 1x h100, fake GRES
    assert json.loads((job_dir(stack, "stack-gpu") / "plan.json").read_text())["gres"] == "gpu:h100:1"
    rows = run(stack, "rag", "status", "--json").json()
    row = next(r for r in rows if r["name"] == "stack-gpu")
    assert row["state"] == "RUNNING" and row["endpoint_state"] == "ready" and row["services"] == services
    shown = run(stack, "rag", "status", "stack-gpu")
    assert shown.code == 0 and "stack-gpu" in shown.out and "tei" in shown.out
    chat = run(stack, "chat", "stack-gpu", "Hello")
    assert chat.code != 0 and "is a RAG stack that runs no generator" in chat.error_line
    argv = service_argv(stack, "stack-gpu", "tei")
    assert argv[1] == "run" and "--nv" in argv and "--cleanenv" in argv
    weaviate = service_argv(stack, "stack-gpu", "weaviate")
    assert "--containall" in weaviate and "--nv" not in weaviate


@pytest.mark.slurm
def test_the_key_is_secret_and_every_route_needs_it(stack):
    ready(stack, "stack-gpu")
    key, folder = key_of(stack, "stack-gpu"), job_dir(stack, "stack-gpu")
    assert stat.S_IMODE((folder / "api_key").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("job.sbatch", "record.json", "plan.json", "request.json", "endpoint.json"):
        assert key not in (folder / name).read_text()
    assert key not in log_of(stack, "stack-gpu") and key not in Path(stack["env"]["KIT_STANDIN_LOG"]).read_text()
    ep = endpoint(stack, "stack-gpu")
    job_id = str(ep["job_id"])
    shown = subprocess.run(["scontrol", "show", "job", "-dd", job_id], capture_output=True, text=True)
    assert shown.returncode == 0 and key not in shown.stdout

    # Weaviate checks the key itself (gRPC cannot pass an HTTP guard): every route but its readiness
    # routes and the API root refuses a request without it
    weaviate = every_route(f"http://{ep['host']}:{ep['services']['weaviate']['port']}", "weaviate", key)
    open_ = {route for route, (without, _) in weaviate.items() if without != 401}
    assert open_ == {("GET", "/v1"), ("GET", "/v1/.well-known/live"), ("GET", "/v1/.well-known/ready"),
                     ("GET", "/v1/.well-known/openid-configuration")}
    assert len(weaviate) > 100 and all(with_key != 401 for _, with_key in weaviate.values())
    status, body = request(f"http://{ep['host']}:{ep['services']['weaviate']['port']}/v1/meta", key="wrong")
    assert status == 401 and b"invalid api key" in body

    # TEI: kit's guard is its door, every route but GET /health needs the job's key
    tei = every_route(f"http://{ep['host']}:{ep['services']['tei']['port']}", "tei", key)
    assert tei.pop(("GET", "/health")) == (200, 200)
    assert {route: s for route, s in tei.items() if s[0] != 401} == {}
    assert {route: s for route, s in tei.items() if s[1] == 401} == {}
    # and TEI itself, on the node only, wants a key of its own that nobody but the guard has
    argv = service_argv(stack, "stack-gpu", "tei")
    engine = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
    assert argv[argv.index("--hostname") + 1] == "127.0.0.1"
    assert request(engine + "/embed", "POST", key, {"inputs": "x"})[0] == 401


@pytest.mark.slurm
def test_tei_embeds_like_the_in_process_model(stack):
    from kit.errors import KitError
    from kit.rag.embed import LocalEmbedder, TEIEmbedder

    ready(stack, "stack-gpu")
    ep = endpoint(stack, "stack-gpu")
    url = f"http://{ep['host']}:{ep['services']['tei']['port']}"
    texts = [f"Jobs on gengpu may run for {n} hours; scratch is purged after 30 days." for n in range(40)]
    texts[3] = "Weaviate keeps its data on project storage."
    served = TEIEmbedder(url, key_of(stack, "stack-gpu"), "all-MiniLM-L6-v2").embed(texts)  # 32 + 8
    local = LocalEmbedder().embed(texts)
    assert len(served) == len(local) == 40 and len(served[0]) == 384
    worst = max(abs(a - b) for u, v in zip(served, local) for a, b in zip(u, v))
    assert worst < 1e-5, worst
    assert served[3] != served[4]
    with pytest.raises(KitError, match=r"refused the API key \(401\)"):
        TEIEmbedder(url, "wrong", "all-MiniLM-L6-v2").embed(["x"])


@pytest.mark.slurm
def test_a_service_that_dies_stops_the_job_with_its_log(stack):
    """TEI exits under the running job: the job stops within seconds, TEI's last lines in its log, the
    reason in `failed`; the other services are stopped and every port released."""
    ready(stack, "stack-gpu")
    ep = endpoint(stack, "stack-gpu")
    start = time.monotonic()
    (stack["exit"]["stack-gpu"] / "tei").touch()
    folder = job_dir(stack, "stack-gpu")
    while time.monotonic() - start < 30 and endpoint(stack, "stack-gpu")["state"] != "failed":
        time.sleep(0.2)
    assert endpoint(stack, "stack-gpu")["state"] == "failed" and time.monotonic() - start < 15
    assert (folder / "failed").read_text().strip() == "tei exited (see its last lines above)"
    log = log_of(stack, "stack-gpu")
    assert "kit-job: tei exited; its last lines:" in log and "stand-in: tei exits" in log
    assert log.index("stand-in: tei exits") < log.index("kit-job: error: tei exited")
    w = run(stack, "wait", "stack-gpu", "--timeout", "60")
    assert w.code == 4 and "tei exited" in w.err
    ports = [ep["services"]["weaviate"]["port"], ep["services"]["weaviate"]["grpc_port"], ep["port"]]
    for port in ports:  # nothing listens (Weaviate was stopped too), no reservation is left
        assert subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode
        assert not Path(f"/tmp/kit-ports/{port}").exists()
    assert not list(Path("/tmp").glob(f"kit-run-{ep['job_id']}.*"))


@pytest.mark.slurm
def test_a_service_that_dies_at_start_fails_wait_with_its_redacted_log(stack):
    """TEI exits while it loads: `kit wait` fails at once with the reason; TEI's last lines are in the
    job's log with the key TEI logged (its own, in its arguments) replaced, and the job's key nowhere."""
    start = time.monotonic()
    w = run(stack, "wait", "stack-doomed", "--timeout", "120")
    assert w.code == 4 and "tei exited" in w.err and time.monotonic() - start < 60
    log = log_of(stack, "stack-doomed")
    tail = log[log.index("kit-job: tei exited; its last lines:"):]
    args = next(line for line in tail.splitlines() if line.startswith("Args "))
    assert '"--api-key": "[redacted]"' in args  # the stand-in, like TEI, logs its key in clear
    assert key_of(stack, "stack-doomed") not in log
    assert (job_dir(stack, "stack-doomed") / "failed").read_text().strip() == "tei exited (see its last lines above)"


@pytest.mark.slurm
def test_weaviate_alone_on_the_cpu_partition(stack):
    url = ready(stack, "stack-cpu")
    ep = endpoint(stack, "stack-cpu")
    assert set(ep["services"]) == {"weaviate"} and ep["port"] == ep["services"]["weaviate"]["port"]
    assert ep["health"] == "/v1/.well-known/ready" and url.endswith(f":{ep['port']}")
    st = run(stack, "status", "stack-cpu", "--json").json()
    assert st["ready"] and st["nodes"] == "qnode0001"  # the short partition's node: no GPU
    assert "#SBATCH --gres" not in (job_dir(stack, "stack-cpu") / "job.sbatch").read_text()
    status, body = request(f"{url}/v1/meta", key=key_of(stack, "stack-cpu"))
    assert status == 200 and json.loads(body)["version"]
    assert request(f"{url}/v1/meta")[0] == 401
    data = Path(json.loads((job_dir(stack, "stack-cpu") / "record.json").read_text())["data_dir"])
    assert data == stack["base"] / "project" / "kit" / "rag" / "stack-cpu" and (data / "raft").is_dir()
    r = run(stack, "rag", "down", "stack-cpu")
    assert r.code == 0 and "CANCELLED" in r.out
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and endpoint(stack, "stack-cpu")["state"] != "stopped":
        time.sleep(0.2)
    assert endpoint(stack, "stack-cpu")["state"] == "stopped"
    for port in (ep["port"], ep["services"]["weaviate"]["grpc_port"]):
        assert subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode


@pytest.mark.slurm
def test_a_new_job_reopens_the_same_data(stack):
    """Another job (another name, another node name would be Weaviate's default) on the data of the stopped
    one gets ready: Raft state is kept under a node name that follows the data directory."""
    data = json.loads((job_dir(stack, "stack-cpu") / "record.json").read_text())["data_dir"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and endpoint(stack, "stack-cpu")["state"] != "stopped":
        time.sleep(0.2)
    exit_dir = stack["base"] / "exit" / "reopened"
    exit_dir.mkdir()
    r = kit("rag", "up", "--cpu", "--name", "reopened", "--data-dir", data, "--ready-timeout", "30",
            env=dict(stack["env"], KIT_STANDIN_EXIT_DIR=str(exit_dir)))
    assert r.code == 0, r.err
    ready(stack, "reopened")
    (exit_dir / "weaviate").touch()  # and Weaviate dying stops this one, with its last lines
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and endpoint(stack, "reopened")["state"] != "failed":
        time.sleep(0.2)
    assert endpoint(stack, "reopened")["state"] == "failed"
    log = log_of(stack, "reopened")
    assert "kit-job: weaviate exited; its last lines:" in log and "stand-in: weaviate exits" in log
    assert (job_dir(stack, "reopened") / "failed").read_text().strip() == "weaviate exited (see its last lines above)"


@pytest.mark.slurm
def test_a_generator_in_the_job_answers_rag_ask(stack, tmp_path):
    """`kit rag up --model`: the generator runs as `kit serve` runs it, in the stack's job, and `kit rag ask
    --stack JOB` uses it by default (here over a local store: the Weaviate stand-in has no gRPC)."""
    url = ready(stack, "stack-model")
    ep = endpoint(stack, "stack-model")
    assert set(ep["services"]) == {"weaviate", "tei", "generator"} and ep["services"]["tei"]["device"] == "cpu"
    assert ep["services"]["generator"] == {"port": ep["port"], "engine": "tgi", "model": "tiny-chat"}
    assert url.endswith(f":{ep['port']}")
    record = json.loads((job_dir(stack, "stack-model") / "record.json").read_text())
    assert record["generator_engine"] == "tgi" and record["gpus"] == 1 and record["images"][0] == "tgi"
    assert record["gpu_type"] == "a100-80" and run(stack, "status", "stack-model", "--json").json()["nodes"] == "qgpu2002"
    job_id = str(ep["job_id"])
    assert "--nv" not in service_argv(stack, "stack-model", "tei-cpu")
    tgi = next(a for a in runtime_calls(stack) if "--model-id" in a and str(stack["model"]) in a
               and any(x.startswith(f"/tmp/kit-run-{job_id}.") for x in a))
    assert "--nv" in tgi and tgi[tgi.index("--num-shard") + 1] == "1"

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "quest.md").write_text("# Quest\n\nJobs on gengpu may run for at most two days.\n")
    (docs / "scratch.md").write_text("# Scratch\n\nScratch is purged after 30 days and never backed up.\n")
    store = f"local:{tmp_path / 'store'}"
    assert run(stack, "rag", "ingest", str(docs), "--store", store).code == 0
    code = ("import json, sys\n"
            "from kit.rag.ask import ask, choose_generator\n"
            "from kit.rag.target import open_target\n"
            "gen = choose_generator(None, 'stack-model', None, None, 8)\n"
            "target = open_target(stack=None, store=sys.argv[1], collection=None, create=False)\n"
            "print(json.dumps(dict(ask(target, 'How long may a job run?', k=2, gen=gen).as_json(), url=gen.url)))\n")
    proc = subprocess.run([sys.executable, "-c", code, store], capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, **stack["env"]))
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["url"] == url and answer["answer"] is not None
    assert answer["sources"][0]["source"].endswith("quest.md")
    assert '"POST /v1/chat/completions" 200' in log_of(stack, "stack-model")  # the job's own TGI answered
    chat = run(stack, "chat", "stack-model", "Hello", "--max-tokens", "4")  # its front door is the generator's
    assert chat.code == 0 and chat.out.strip(), chat.err

    r = run(stack, "stop", "stack-model")
    assert r.code == 0 and "CANCELLED" in r.out
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and endpoint(stack, "stack-model")["state"] != "stopped":
        time.sleep(0.2)
    assert endpoint(stack, "stack-model")["state"] == "stopped"
    pid = ep["pid"]  # the generator's engine
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/status").read_text().split("State:")[1][:4]
    for port in (ep["port"], ep["services"]["tei"]["port"], ep["services"]["weaviate"]["port"]):
        assert subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode
