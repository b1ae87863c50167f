"""Serving jobs against hostile input on the real local Slurm: a submitting shell full of
variables that would steer the engine or the runtime, and paths, names and a module holding
shell syntax. Nothing of it may execute or change what the engine gets."""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import pytest
import yaml
from kitrun import kit
from standin.site import cancel_jobs, standin_site

pytestmark = pytest.mark.slurm

# Names TGI's launcher and vLLM read from the environment, and the runtimes' own variables.
HOSTILE_ENV = {
    "DTYPE": "float32", "QUANTIZE": "gptq", "NUM_SHARD": "8", "MAX_BATCH_SIZE": "1", "LORA_ADAPTERS": "evil/adapter",
    "MASTER_ADDR": "10.9.9.9", "MAX_TOTAL_TOKENS": "7", "PORT": "1", "HOSTNAME": "evil.example", "VLLM_PORT": "1",
    "VLLM_API_KEY": "hostile-key", "API_KEY": "hostile-key", "PYTHONPATH": "/kit-hostile-path", "HF_HUB_OFFLINE": "0",
    "SINGULARITYENV_LORA_ADAPTERS": "evil/adapter", "APPTAINERENV_NUM_SHARD": "8", "SINGULARITYENV_PYTHONPATH": "/kit-hostile-path",
}


@pytest.fixture(scope="module")
def env(slurm_cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    setup = standin_site(base)
    (base / "hostile-bind").mkdir()
    yield setup
    cancel_jobs(base)  # leave nothing running


def calls(setup) -> list[dict]:
    return [json.loads(line) for line in Path(setup["env"]["KIT_STANDIN_LOG"]).read_text().splitlines()]


def engine_call(setup, job_id: str) -> dict:
    return next(c for c in calls(setup) if any(a.startswith(f"/tmp/kit-run-{job_id}.") for a in c["argv"])
                and "kit-python" not in c["argv"])


def serve_and_wait(setup, name: str, *args: str, env: dict | None = None, model=None) -> dict:
    r = kit("serve", str(model or setup["model"]), "--name", name, "--json", *args, env=dict(setup["env"], **(env or {})))
    assert r.code == 0, r.err
    record = r.json()
    w = kit("wait", name, "--timeout", "120", env=setup["env"])
    assert w.code == 0, w.err
    return dict(record, url=w.out.strip())


def normalized(call: dict, job_id: str) -> list[str]:
    """The engine's argv with what differs between any two jobs (ports, run dir) masked."""
    run_dir = re.compile(rf"/tmp/kit-run-{job_id}\.[^/]+")
    return ["PORT" if a.isdigit() and 20000 <= int(a) <= 20009 else run_dir.sub("RUN", a) for a in call["argv"]]


@pytest.mark.parametrize("engine", ["tgi", "vllm"])
def test_a_hostile_environment_changes_nothing_the_engine_gets(env, engine):
    clean = serve_and_wait(env, f"clean-{engine}", "--engine", engine)
    bind = str(env["base"] / "hostile-bind")
    hostile_vars = dict(HOSTILE_ENV, APPTAINER_BIND=f"{bind}:/kit-hostile-bind", SINGULARITY_BIND=f"{bind}:/kit-hostile-bind",
                        SINGULARITY_BINDPATH=bind, APPTAINER_BINDPATH=bind)
    hostile = serve_and_wait(env, f"hostile-{engine}", "--engine", engine, env=hostile_vars)
    a, b = engine_call(env, clean["job_id"]), engine_call(env, hostile["job_id"])
    assert normalized(a, clean["job_id"]) == normalized(b, hostile["job_id"])
    assert b["env_binds"] == [] and b["env_keys"] == a["env_keys"]
    log = (env["base"] / "state" / "jobs" / f"hostile-{engine}" / f"slurm-{hostile['job_id']}.out").read_text()
    for value in ("float32", "gptq", "evil/adapter", "10.9.9.9", "/kit-hostile-path", "/kit-hostile-bind", "hostile-key"):
        assert value not in log, value  # the stand-ins log what they were given (TGI: all its Args)
    for job in (clean, hostile):
        assert kit("stop", job["job_id"], env=env["env"]).code == 0


def test_shell_syntax_in_paths_and_names_never_executes(env, tmp_path):
    """A model directory, a scratch path and a state path holding quotes, spaces, `$(...)` and
    backticks: the job runs, serves the model with both engines, and nothing executes."""
    marker = tmp_path / "executed"
    evil = f"it's a $(touch {marker}) `touch {marker}` \"dir\""
    model = tmp_path / evil / "tiny chat"
    shutil.copytree(env["model"], model)
    layer_file = Path(env["env"]["XDG_CONFIG_HOME"]) / "kit" / "sites" / "quest.yaml"
    layer = yaml.safe_load(layer_file.read_text())
    layer["paths"]["scratch"] = str(tmp_path / f"scratch {evil}")
    site_file = tmp_path / "evil-site.yaml"
    site_file.write_text((Path(__file__).resolve().parents[1] / "site-configs" / "quest.yaml").read_text())
    user = dict(env["env"], XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "kit" / "sites").mkdir(parents=True)
    (tmp_path / "xdg" / "kit" / "sites" / "quest.yaml").write_text(yaml.safe_dump(layer))
    for engine in ("tgi", "vllm"):
        r = kit("serve", str(model), "--engine", engine, "--name", f"odd-{engine}", "--json", env=user)
        assert r.code == 0, r.err
        w = kit("wait", f"odd-{engine}", "--timeout", "120", env=user)
        assert w.code == 0, w.err
        chat = kit("chat", f"odd-{engine}", "Hello", "--max-tokens", "4", env=user)
        assert chat.code == 0 and chat.out.strip(), chat.err
        assert kit("stop", f"odd-{engine}", env=user).code == 0
    assert not marker.exists()


def test_a_module_name_with_shell_syntax_is_only_ever_a_name(env, tmp_path):
    marker = tmp_path / "executed"
    layer_file = Path(env["env"]["XDG_CONFIG_HOME"]) / "kit" / "sites" / "quest.yaml"
    layer = yaml.safe_load(layer_file.read_text())
    layer["runtime"]["module"] = f"apptainer/1.4 $(touch {marker}); touch {marker} \"x\n"
    (tmp_path / "xdg" / "kit" / "sites").mkdir(parents=True)
    (tmp_path / "xdg" / "kit" / "sites" / "quest.yaml").write_text(yaml.safe_dump(layer))
    user = dict(env["env"], XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    r = kit("serve", str(env["model"]), "--name", "odd-module", "--json", env=user)
    assert r.code == 0, r.err
    w = kit("wait", "odd-module", "--timeout", "120", env=user)
    assert w.code == 4 and "cannot load" in w.err  # this machine has no module system
    assert not marker.exists()


def test_a_port_taken_on_another_address_is_not_free(env):
    """Ports held on an address other than 127.0.0.1 are seen too (kit reads /proc/net/tcp)."""
    layer_file = Path(env["env"]["XDG_CONFIG_HOME"]) / "kit" / "sites" / "quest.yaml"
    saved = layer_file.read_text()
    holders = []
    try:
        for port in range(20100, 20106):  # all taken, on 127.0.0.2 and 127.0.0.3 only
            s = socket.socket()
            s.bind((f"127.0.0.{2 + port % 2}", port))
            s.listen()
            holders.append(s)
        layer = yaml.safe_load(saved)
        layer["network"]["port_range"] = [20100, 20105]
        layer_file.write_text(yaml.safe_dump(layer))
        r = kit("serve", str(env["model"]), "--name", "no-ports", "--json", env=env["env"])
        assert r.code == 0, r.err
        w = kit("wait", "no-ports", "--timeout", "60", env=env["env"])
        assert w.code == 4 and "no free port in 20100-20105" in w.err, w.err
    finally:
        layer_file.write_text(saved)
        for s in holders:
            s.close()


def test_the_engines_last_lines_reach_the_log(env, tmp_path):
    """An engine that crashes with a long traceback: every line, the last one above all, is in
    the log (the job waits for the filter that redacts the engine's output)."""
    crashing = tmp_path / "crashing-model"
    shutil.copytree(env["model"], crashing)
    config = json.loads((crashing / "config.json").read_text())
    (crashing / "config.json").write_text(json.dumps(dict(config, kit_standin_crash_lines=100000)))
    r = kit("serve", str(crashing), "--name", "crashing", "--json", env=env["env"])
    assert r.code == 0, r.err
    w = kit("wait", "crashing", "--timeout", "120", env=env["env"])
    assert w.code == 4 and "exited with status 1" in w.err, w.err
    log = (env["base"] / "state" / "jobs" / "crashing" / f"slurm-{r.json()['job_id']}.out").read_text()
    assert log.count("Traceback line ") == 100000 and "crashed loading" in log
    # The job waited for them before it gave up: its own last words come after the engine's,
    # and `kit wait` shows the engine's last line in the tail it prints. (On sites whose
    # proctrack kills what a job leaves behind, lines written later are lost.)
    assert log.index("crashed loading") < log.index("kit-job: error: TGI exited with status 1")
    assert "crashed loading" in w.err
