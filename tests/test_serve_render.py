"""Rendered serving scripts: golden files, flags against the pinned engines' real flag sets,
quoting, and `sbatch --test-only` on the local Slurm that mimics Quest and KLC."""

import json
import os
import shlex
import subprocess

import pytest
import yaml

from kit.sites import load_site
from serving import ROOT, build_job, engine_command, engine_flags

GOLDEN = ROOT / "tests" / "golden"
SITES = {"quest": "p12345", "klc": "kellogg"}


def pinned_flags() -> dict:
    return yaml.safe_load((ROOT / "tests" / "engine_flags.yaml").read_text())


@pytest.fixture
def fixed_env(monkeypatch):
    """Paths in a rendered script depend on the user and state dir: pin both."""
    monkeypatch.setenv("USER", "labuser")
    monkeypatch.setenv("HOME", "/home/labuser")
    monkeypatch.setenv("KIT_STATE_DIR", "/home/labuser/.kit")


@pytest.mark.parametrize("engine", ["tgi", "vllm"])
@pytest.mark.parametrize("site_name", SITES)
def test_golden_scripts(fixed_env, monkeypatch, engine, site_name):
    monkeypatch.setattr("kit.jobs.serve.ensure_writable", lambda root: None)
    site = load_site(site_name).site
    job = build_job(site, engine, account=SITES[site_name])
    golden = GOLDEN / f"serve-{engine}-{site_name}.sbatch"
    if os.environ.get("KIT_UPDATE_GOLDEN"):
        golden.write_text(job.script)
    assert job.script == golden.read_text(), f"rendered script differs from {golden} (KIT_UPDATE_GOLDEN=1 rewrites it)"


@pytest.mark.parametrize("engine", ["tgi", "vllm"])
@pytest.mark.parametrize("site_name", SITES)
def test_engine_flags_exist_in_the_pinned_version(fixed_env, monkeypatch, engine, site_name):
    monkeypatch.setattr("kit.jobs.serve.ensure_writable", lambda root: None)
    site = load_site(site_name).site
    FLAGS = pinned_flags()
    for options in ({}, {"quantize": "bitsandbytes-nf4"}, {"quantize": "fp8", "gpus": 2}):
        job = build_job(site, engine, model_id="Qwen/Qwen2.5-32B-Instruct", account=SITES[site_name], **options)
        known = FLAGS[engine]["flags"]
        choices = FLAGS[engine].get("choices", {})
        for flag, value in engine_flags(engine_command(job.script), engine):
            assert flag in known, f"{engine} {FLAGS[engine]['version']} has no {flag}"
            assert (value is not None) == bool(known[flag]), f"{flag}: value {value!r}"
            if flag in choices and not value.startswith("$"):
                assert value in choices[flag], f"{flag} {value} not in {choices[flag]}"


def test_values_reaching_the_shell_are_quoted(fixed_env, monkeypatch, tmp_path):
    monkeypatch.setattr("kit.jobs.serve.ensure_writable", lambda root: None)
    odd = tmp_path / "it's a $(dir)"
    odd.mkdir()
    site_file = tmp_path / "odd.yaml"
    site_file.write_text((ROOT / "site-configs" / "klc.yaml").read_text()
                         .replace("/kellogg/proj/$USER/containers", str(odd / "images")))
    site = load_site(str(site_file)).site
    script = build_job(site, "tgi", account="kellogg").script
    assert f"'{odd}/images/tgi-3.3.7.sif'" not in script  # plain single quotes would break on the '
    argv = engine_command(script)
    assert str(odd / "images" / "tgi-3.3.7.sif") in argv  # shlex reads back the exact path
    for line in script.splitlines():  # wherever the path appears, the shell reads it back whole
        if "dir)" in line and not line.lstrip().startswith("#"):
            assert any(str(odd) in token for token in shlex.split(line.rstrip("\\"))), line
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_sbatch_lines_carry_no_shell_variables(fixed_env, monkeypatch):
    monkeypatch.setattr("kit.jobs.serve.ensure_writable", lambda root: None)
    for site_name, account in SITES.items():
        for engine in ("tgi", "vllm"):
            script = build_job(load_site(site_name).site, engine, account=account).script
            for line in script.splitlines():
                if line.startswith("#SBATCH"):
                    assert "$" not in line and "'" not in line and '"' not in line, line


def test_site_can_drop_and_add_directives(fixed_env, monkeypatch, tmp_path):
    monkeypatch.setattr("kit.jobs.serve.ensure_writable", lambda root: None)
    user = tmp_path / "xdg" / "kit" / "sites"
    user.mkdir(parents=True)
    (user / "klc.yaml").write_text("sbatch: {drop: [--mem], extra: [--qos=gpu-normal, --exclusive]}\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    script = build_job(load_site("klc").site, "vllm", account="kellogg").script
    assert "#SBATCH --mem" not in script
    assert "#SBATCH --qos=gpu-normal" in script and "#SBATCH --exclusive" in script


def test_api_key_is_never_in_the_script(fixed_env, monkeypatch):
    monkeypatch.setattr("kit.jobs.serve.ensure_writable", lambda root: None)
    script = build_job(load_site("quest").site, "tgi", account="p12345").script
    # The engine gets the job's internal key from its file, through the environment; the guard
    # reads the clients' key from the 0600 file itself. Neither is ever on a command line.
    assert 'export SINGULARITYENV_API_KEY="$(<"$KIT_ENGINE_KEY_FILE")"' in script
    assert '--key-file "$KIT_API_KEY_FILE" --upstream-key-file "$KIT_ENGINE_KEY_FILE"' in script
    assert "--api-key" not in script  # never on a command line, where `ps` would show it


@pytest.mark.slurm
@pytest.mark.parametrize("engine", ["tgi", "vllm"])
@pytest.mark.parametrize("site_name", SITES)
def test_sbatch_test_only_accepts_every_rendered_script(slurm_cluster, fixed_env, monkeypatch, tmp_path, engine, site_name):
    monkeypatch.setattr("kit.jobs.serve.ensure_writable", lambda root: None)
    site = load_site(site_name).site
    models = ["meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-70B-Instruct", "Qwen/Qwen2.5-14B-Instruct"]
    seen = set()
    for model_id in models:
        for gpu in site.partitions[site.defaults.gpu_partition].gpu_tiers:
            job = build_job(site, engine, model_id=model_id, account=SITES[site_name], gpu=gpu)
            if job is None:  # this model does not fit on this tier
                continue
            seen.add((job.plan["gpu_type"], job.plan["gpus"]))
            script = tmp_path / f"{model_id.split('/')[-1]}-{gpu}.sbatch"
            script.write_text(job.script)
            proc = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True)
            assert proc.returncode == 0, f"{script.name}: {proc.stderr}"
            assert "to start at" in proc.stderr
    assert len(seen) >= 3, seen  # every tier of the site was exercised


@pytest.mark.parametrize("engine", ["tgi", "vllm"])
def test_lora_adapters_are_bound_and_passed_with_the_engines_flags(fixed_env, monkeypatch, tmp_path, engine):
    import json as _json

    from kit.jobs import serve
    from kit.models import catalog
    from kit.models.resolve import from_catalog
    from kit.plan import plan_serve

    monkeypatch.setattr("kit.jobs.serve.ensure_writable", lambda root: None)
    adapter = tmp_path / "legal-lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(_json.dumps({"r": 24, "peft_type": "LORA"}))
    site = load_site("quest").site
    info = from_catalog("meta-llama/Llama-3.1-8B-Instruct", catalog.lookup("meta-llama/Llama-3.1-8B-Instruct"))
    plan = plan_serve(info, site, engine=engine)
    job = serve.build(site, info, plan, account="p12345", time=None, adapters=[str(adapter), "lab/other-lora"],
                      name="adapters", ready_timeout_s=60, request={})
    argv = engine_command(job.script)
    assert f"{adapter}:{adapter}:ro" in argv
    flags = dict(engine_flags(argv, engine))
    known = pinned_flags()[engine]["flags"]
    assert set(flags) <= set(known)
    if engine == "tgi":  # a Hub adapter as a bare id: TGI reads NAME=... as a local path
        assert flags["--lora-adapters"] == f"legal-lora={adapter},lab/other-lora"
        assert job.record["adapters"] == ["legal-lora", "lab/other-lora"]
    else:
        # a Hub adapter's rank is unknown here: 64 is allowed (else the smallest allowed rank >= 24, 32)
        assert "--enable-lora" in flags and flags["--max-lora-rank"] == "64"
        assert flags["--lora-modules"] == f"legal-lora={adapter} other-lora=lab/other-lora"
        assert "--lora-modules" in pinned_flags()["vllm"]["multi_value"]
        local_only = serve.build(site, info, plan, account="p12345", time=None, adapters=[str(adapter)],
                                 name="adapters2", ready_timeout_s=60, request={})
        assert dict(engine_flags(engine_command(local_only.script), engine))["--max-lora-rank"] == "32"
        assert job.record["adapters"] == ["legal-lora", "other-lora"]


def test_a_hub_adapter_cannot_be_downloaded_by_an_offline_job(fixed_env, monkeypatch, tmp_path):
    from kit.jobs import serve
    from kit.errors import KitError
    from kit.models.resolve import from_directory
    from kit.plan import plan_serve

    monkeypatch.setattr("kit.jobs.serve.ensure_writable", lambda root: None)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(
        {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 256}))
    info = from_directory(model_dir, str(model_dir), "local")
    site = load_site("quest").site
    plan = plan_serve(info, site)
    with pytest.raises(KitError, match="not in the shared model cache, and this job runs offline"):
        serve.build(site, info, plan, account="p12345", time=None, adapters=["lab/other-lora"], name="x",
                    ready_timeout_s=60, request={})


@pytest.mark.parametrize("engine", ["tgi", "vllm"])
def test_the_job_waits_for_the_engines_filtered_output(fixed_env, monkeypatch, engine):
    """The filter that redacts the engine's output is a process the job tracks and waits for on
    every way out, so the engine's last lines reach the log before the job ends (a process
    substitution is never waited for, and a site's process tracking kills it at the job's end)."""
    monkeypatch.setattr("kit.jobs.serve.ensure_writable", lambda root: None)
    script = build_job(load_site("quest").site, engine, account="p12345").script
    assert "> >(" not in script
    assert 'kit_redact < "$KIT_RUN_DIR/engine.out" &\nKIT_REDACT_PID=$!' in script
    assert '> "$KIT_RUN_DIR/engine.out" 2>&1 &\nKIT_ENGINE_PID=$!' in script
    death, end = script.split("before it was ready")[0], script.split("# Until the engine or the guard ends")[1]
    assert 'kit_stop "$KIT_REDACT_PID"' in death.rsplit("if ! kill -0", 1)[1]  # the engine died while starting
    assert end.index('kit_stop "$KIT_REDACT_PID"') < end.index("exited with status")  # the engine ended
    cleanup = script.split("kit_cleanup() {")[1].split("\n}")[0]
    assert 'kit_stop "$KIT_REDACT_PID"' in cleanup  # a stop signal


def test_kit_never_renders_a_short_option(fixed_env, monkeypatch):
    """Long flags only: TGI 3.3.7's -p is declared by both --port and --prometheus-port."""
    monkeypatch.setattr("kit.jobs.serve.ensure_writable", lambda root: None)
    flags = pinned_flags()
    assert flags["tgi"]["short"]["-g"] == "--graceful-termination-timeout"
    assert flags["tgi"]["short"]["-p"] == ["--port", "--prometheus-port"]
    for engine in ("tgi", "vllm"):
        short = set(flags[engine]["short"])
        for long_forms in flags[engine]["short"].values():
            for long_form in long_forms if isinstance(long_forms, list) else [long_forms]:
                assert long_form in flags[engine]["flags"], long_form
        for site_name, account in SITES.items():
            for options in ({}, {"quantize": "bitsandbytes-nf4"}, {"quantize": "fp8", "gpus": 2}):
                job = build_job(load_site(site_name).site, engine, model_id="Qwen/Qwen2.5-32B-Instruct",
                                account=account, **options)
                argv = engine_command(job.script)
                rest = argv[next(i for i, a in enumerate(argv) if a.endswith(".sif")) + 1:]
                options_given = [a for a in rest if a.startswith("-")]
                assert options_given and all(a.startswith("--") for a in options_given), options_given
                assert not short & set(rest), short & set(rest)
