"""The RAG stack job script (`kit rag up`): golden files, Weaviate's settings from the research
notes, the key kept out of the script, shell syntax, and `sbatch --test-only` on the local Slurm
that mimics Quest and KLC. (Weaviate and TEI cannot run here; the script is not run for real.)"""

import os
import subprocess

import pytest

from kitrun import kit

from kit.sites import load_site

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
SITES = {"quest": "p12345", "klc": "kellogg"}
EMBED = "/models/all-MiniLM-L6-v2"


@pytest.fixture
def fixed_env(monkeypatch, tmp_path):
    monkeypatch.setenv("USER", "labuser")
    monkeypatch.setenv("HOME", "/home/labuser")
    monkeypatch.setenv("KIT_STATE_DIR", "/home/labuser/.kit")
    monkeypatch.setattr("kit.rag.stack.ensure_writable", lambda root: None)
    model = tmp_path / "embed"
    model.mkdir()
    (model / "config.json").write_text("{}")
    monkeypatch.setattr("kit.rag.embed.default_model_dir", lambda: model)
    return str(model)


def render(site_name, cpu, model_dir):
    from kit.rag.stack import build

    site = load_site(site_name).site
    job = build(site, account=SITES[site_name], time=None, name="rag-golden", cpu=cpu, partition=None, gpu=None,
                embed_model=None, generator=None, data_dir=None, ready_timeout_s=1800, request={})
    return job, job.script.replace(model_dir, EMBED)


@pytest.mark.parametrize("cpu", [False, True], ids=["gpu", "cpu"])
@pytest.mark.parametrize("site_name", SITES)
def test_golden_stack_scripts(fixed_env, site_name, cpu):
    _, script = render(site_name, cpu, fixed_env)
    golden = os.path.join(GOLDEN, f"rag-stack-{'cpu' if cpu else 'gpu'}-{site_name}.sbatch")
    if os.environ.get("KIT_UPDATE_GOLDEN"):
        with open(golden, "w") as f:
            f.write(script)
    with open(golden) as f:
        assert script == f.read(), f"rendered script differs from {golden} (KIT_UPDATE_GOLDEN=1 rewrites it)"
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_weaviate_settings_and_key(fixed_env):
    job, script = render("quest", False, fixed_env)
    for line in ["export SINGULARITYENV_CLUSTER_HOSTNAME=kit-rag-golden",
                 "export SINGULARITYENV_RAFT_BOOTSTRAP_EXPECT=1",
                 "export SINGULARITYENV_RAFT_JOIN=kit-rag-golden:\"$KIT_RAFT_RPC_PORT\"",
                 "export SINGULARITYENV_AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED=false",
                 "export SINGULARITYENV_AUTHENTICATION_APIKEY_ENABLED=true",
                 "export SINGULARITYENV_DISABLE_TELEMETRY=true",
                 "export SINGULARITYENV_DEFAULT_VECTORIZER_MODULE=none",
                 "export SINGULARITYENV_GOMEMLIMIT=52428MiB",
                 'export SINGULARITYENV_AUTHENTICATION_APIKEY_ALLOWED_KEYS="$(head -n1 "$KIT_API_KEY_FILE")"',
                 "--bind /projects/p12345/kit/rag/rag-golden:/var/lib/weaviate"]:
        assert line in script, line
    assert '--key-file "$KIT_API_KEY_FILE"' in script and "--api-key" not in script
    assert job.record["data_dir"] == "/projects/p12345/kit/rag/rag-golden"
    assert job.record["more_images"] == ["tei"] and "guard.py" in job.files
    for port in ("WEAVIATE_PORT", "GRPC_PORT", "GOSSIP_PORT", "DATA_PORT", "RAFT_PORT", "RAFT_RPC_PORT", "TEI_PORT"):
        assert f"kit_reserve_port; KIT_{port}=$KIT_RESERVED" in script


@pytest.mark.slurm
@pytest.mark.parametrize("cpu", [False, True], ids=["gpu", "cpu"])
@pytest.mark.parametrize("site_name", SITES)
def test_sbatch_test_only_accepts_the_stack(slurm_cluster, fixed_env, tmp_path, site_name, cpu):
    _, script = render(site_name, cpu, fixed_env)
    path = tmp_path / "stack.sbatch"
    path.write_text(script)
    proc = subprocess.run(["sbatch", "--test-only", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "to start at" in proc.stderr


def test_stack_bad_input(tmp_path):
    res = kit("rag", "ask", "What?", "--stack", "no-such-job", "--no-generate")
    assert res.code != 0 and "no-such-job" in res.error_line
    res = kit("rag", "up", "--site", "quest", "--account", "p12345", "--gpu", "v100", "--dry-run")
    assert res.code != 0 and "--gpu v100" in res.error_line
    res = kit("rag", "down", "nothing-here")
    assert res.code != 0 and "nothing-here" in res.error_line
