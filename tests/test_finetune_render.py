"""Rendered fine-tuning scripts: golden files, quoting, `sbatch --test-only` on the local Slurm
that mimics Quest and KLC, and the plan's refusal naming the cheapest fix."""

import dataclasses
import os
import shlex
import subprocess

import msgspec
import pytest

from kit.errors import KitError
from kit.jobs import finetune
from kit.models import catalog
from kit.models.resolve import from_catalog
from kit.plan import plan_finetune
from kit.sites import load_site
from kit.train.config import TrainConfig
from serving import ROOT

GOLDEN = ROOT / "tests" / "golden"
SITES = {"quest": "p12345", "klc": "kellogg"}


@pytest.fixture
def fixed_env(monkeypatch):
    monkeypatch.setenv("USER", "labuser")
    monkeypatch.setenv("HOME", "/home/labuser")
    monkeypatch.setenv("KIT_STATE_DIR", "/home/labuser/.kit")
    monkeypatch.setattr("kit.jobs.finetune.ensure_writable", lambda root: None)
    monkeypatch.setattr("kit.jobs.finetune.check_data", lambda cfg: cfg.data.train_files + cfg.data.validation_files)
    monkeypatch.setattr("kit.jobs.finetune.check_output_dir", lambda out, config: [])


def local_model(model_id: str, where: str):
    """A catalog model as if it were a local directory (the job runs offline from it)."""
    return dataclasses.replace(from_catalog(model_id, catalog.lookup(model_id)), name=where, source="local",
                               location=where)


def config(base: str, **overrides) -> TrainConfig:
    data = {"model": f"{base}/models/Llama-3.1-8B-Instruct",
            "data": {"train": f"{base}/data/train.jsonl", "validation": f"{base}/data/val.jsonl"},
            "method": "lora", "training": {"max_steps": 1000, "seq_len": 4096},
            "output_dir": f"{base}/runs/legal-lora"}
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return msgspec.convert(data, TrainConfig)


def build(site_name: str, base: str = "/projects/p12345", model_id: str = "meta-llama/Llama-3.1-8B-Instruct",
          name: str = "golden-finetune", **overrides):
    site = load_site(site_name).site
    cfg = config(base, **overrides)
    info = local_model(model_id, cfg.model)
    plan = plan_finetune(info, site, **finetune.plan_options(cfg))
    return finetune.build(site, cfg, __import__("pathlib").Path(f"{base}/finetune.yaml"), info, plan,
                          account=SITES[site_name], time="12:00:00", name=name, request={})


def trainer_command(script: str) -> list[str]:
    start = script.index('"$KIT_RUNTIME" exec')
    end = script.index(" &\n", start)
    return shlex.split(script[start:end].replace("\\\n", " "))


@pytest.mark.parametrize("site_name", SITES)
def test_golden_scripts(fixed_env, site_name):
    job = build(site_name)
    golden = GOLDEN / f"finetune-{site_name}.sbatch"
    if os.environ.get("KIT_UPDATE_GOLDEN"):
        golden.write_text(job.script)
    assert job.script == golden.read_text(), f"rendered script differs from {golden} (KIT_UPDATE_GOLDEN=1 rewrites it)"


def test_the_script_requeues_itself_after_a_checkpoint(fixed_env):
    job = build("quest")
    lines = job.script.splitlines()
    assert "#SBATCH --signal=B:USR1@600" in lines and "#SBATCH --requeue" in lines
    assert "#SBATCH --open-mode=append" in lines  # the log of every run in one file
    assert job.record["task"] == "finetune"
    argv = trainer_command(job.script)
    assert argv[:4] == ["$KIT_RUNTIME", "exec", "--nv", "--cleanenv"]
    assert argv[-5:-3] == [job.record["image"], "python"]
    assert argv[-3:] == ["-m", "kit.train", str(job.job_dir / "finetune.yaml")]
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    assert "/projects/p12345/models/Llama-3.1-8B-Instruct:/projects/p12345/models/Llama-3.1-8B-Instruct:ro" in binds
    assert "/projects/p12345/data:/projects/p12345/data:ro" in binds
    assert "/projects/p12345/runs/legal-lora:/projects/p12345/runs/legal-lora" in binds  # writable
    assert f"{job.job_dir}:{job.job_dir}:ro" in binds
    # exit 75 after USR1 requeues; after TERM (kit stop, scancel) it does not: a requeue would
    # bring a cancelled job back
    tail = job.script.split("# Until the trainer ends")[1]
    assert 'scontrol requeue "$SLURM_JOB_ID"' in tail.split("TERM|INT)")[1]
    assert "scontrol requeue" not in tail.split("TERM|INT)")[1].split(";;")[0]
    for needed in ("kit_need_cmd scontrol", "/projects/p12345/data/train.jsonl", "/projects/p12345/data/val.jsonl",
                   "/projects/p12345/models/Llama-3.1-8B-Instruct/config.json", "finetune.yaml"):
        assert needed in job.script.split("# The trainer's environment")[0], needed


def test_several_gpus_run_one_trainer_process_per_gpu(fixed_env):
    """kit's launcher (not bare torchrun): it keeps the workers' exit 75 and gives them the whole
    signal margin to checkpoint (tests/test_train.py runs it with two processes)."""
    job = build("quest", model_id="meta-llama/Llama-3.1-70B-Instruct",
                model="/projects/p12345/models/Llama-3.1-70B-Instruct", training={"seq_len": 2048})
    assert job.plan["gpus"] > 1
    argv = trainer_command(job.script)
    i = argv.index("python")
    assert argv[i:] == ["python", "-m", "kit.train", "/home/labuser/.kit/jobs/" + job.name + "/finetune.yaml",
                        "--nproc", str(job.plan["gpus"])]
    assert "torchrun" not in job.script and "&& rc=" not in job.script  # its exit status is the workers'


def test_the_job_config_is_the_users_with_the_resolved_model(fixed_env):
    import yaml

    job = build("quest")
    data = yaml.safe_load(job.files["finetune.yaml"])
    assert data["model"] == "/projects/p12345/models/Llama-3.1-8B-Instruct"
    assert data["training"]["max_steps"] == 1000 and data["output_dir"] == "/projects/p12345/runs/legal-lora"
    msgspec.convert(data, TrainConfig)  # the trainer's schema takes it back


def test_values_reaching_the_shell_are_quoted(fixed_env, monkeypatch, tmp_path):
    odd = str(tmp_path / "it's a $(touch pwned) `x` dir")
    job = build("quest", base=odd, name="hostile")
    argv = trainer_command(job.script)
    assert f"{odd}/models/Llama-3.1-8B-Instruct:{odd}/models/Llama-3.1-8B-Instruct:ro" in argv
    for line in job.script.splitlines():
        if "pwned" in line and not line.lstrip().startswith("#"):
            assert any(odd in token for token in shlex.split(line.rstrip("\\"))), line
    assert subprocess.run(["bash", "-n"], input=job.script, text=True).returncode == 0
    monkeypatch.setenv("KIT_STATE_DIR", odd)  # the log path is an #SBATCH value: refused, never mangled
    with pytest.raises(KitError, match="#SBATCH values may hold only"):
        build("quest", base=odd, name="hostile2")


@pytest.mark.slurm
@pytest.mark.parametrize("site_name", SITES)
def test_sbatch_test_only_accepts_the_scripts(slurm_cluster, fixed_env, tmp_path, site_name):
    for model_id, seq_len in (("meta-llama/Llama-3.1-8B-Instruct", 4096), ("meta-llama/Llama-3.1-70B-Instruct", 2048)):
        job = build(site_name, model_id=model_id, model=f"/m/{model_id}", training={"seq_len": seq_len})
        script = tmp_path / f"{site_name}-{job.plan['gpus']}.sbatch"
        script.write_text(job.script)
        proc = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script.name}: {proc.stderr}"
        assert "to start at" in proc.stderr


def plan(model_id, **options):
    return plan_finetune(from_catalog(model_id, catalog.lookup(model_id)), load_site("quest").site, **options)


@pytest.mark.parametrize("model_id, options, lever", [
    ("meta-llama/Llama-3.1-8B-Instruct", dict(grad_ckpt=False, seq_len=8192, gpus=1, gpu="a100-40"), "grad_ckpt"),
    ("meta-llama/Llama-3.1-70B-Instruct", dict(method="lora", gpus=2), "gpus"),
    ("meta-llama/Llama-3.1-405B-Instruct", dict(method="lora"), None),
    ("mistralai/Mixtral-8x22B-Instruct-v0.1", dict(method="lora"), "method"),
    ("meta-llama/Llama-3.1-70B-Instruct", dict(method="qlora", seq_len=32768, gpus=1), "seq_len"),
])
def test_a_plan_that_does_not_fit_names_the_cheapest_fix_that_does(model_id, options, lever):
    result = plan(model_id, **options)
    assert not result["fits"]
    fix = result["suggestion"]
    if lever is None:  # nothing kit can change fits
        assert fix["change"] is None and "use a smaller model" in fix["text"]
        return
    assert list(fix["change"]) == [lever], fix
    fixed = plan(model_id, **{**options, **fix["change"]})  # the fix named is one the planner accepts
    assert fixed["fits"] and fixed["gpus"] == fix["plan"]["gpus"]
    if lever == "method":
        assert fix["change"]["method"] == "qlora"
    if lever == "seq_len":  # the longest that fits: twice it does not
        assert not plan(model_id, **{**options, "seq_len": fix["change"]["seq_len"] * 2})["fits"]


def test_a_config_that_does_not_fit_is_refused_with_the_config_key_to_change(fixed_env):
    with pytest.raises(KitError) as e:
        build("quest", model_id="meta-llama/Llama-3.1-70B-Instruct", model="/m/70b", training={"seq_len": 8192})
    assert "does not fit on quest" in str(e.value) and "method: qlora" in str(e.value)
    with pytest.raises(KitError, match=r"it fits with a shorter sequence: training.seq_len: 4096 \(then "):
        build("quest", training={"seq_len": 65536, "gradient_checkpointing": False})


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A working site (stand-in images and lock, the tiny model) and a config that submits."""
    from standin.site import standin_site
    from test_finetune_users import finetune_image, write_run

    home = tmp_path_factory.mktemp("ft-bad")
    finetune_image(home / "images")
    setup = standin_site(home)
    return {"home": home, "env": setup["env"], "config": write_run(home, setup["model"])}


@pytest.mark.slurm
@pytest.mark.parametrize("case, edit, message", [
    ("unknown key", lambda c, d: c.replace("method: lora", "method: lora\nmethd: qlora"),
     "{config}: methd: unknown key"),
    ("wrong type", lambda c, d: c.replace("max_steps: 120", "max_steps: many"),
     "{config}: training.max_steps: "),
    ("missing data file", lambda c, d: c.replace("data/train.jsonl", "data/missing.jsonl"),
     "{config}: data.train: no such data file {home}/data/missing.jsonl"),
    ("data line not JSON", lambda c, d: (d / "train.jsonl").write_text(
        (d / "train.jsonl").read_text() + "{'messages': oops}\n") and c,
     "{home}/data/train.jsonl:65: not a JSON object"),
])
def test_bad_input_is_one_line_and_submits_nothing(slurm_cluster, lab, tmp_path, case, edit, message):
    from kitrun import kit

    home = lab["home"]
    data = home / "data"
    saved = (data / "train.jsonl").read_text()
    config = home / "bad.yaml"
    try:
        config.write_text(edit(lab["config"].read_text(), data))
        r = kit("finetune", str(config), "--name", "bad-input", env=lab["env"])
    finally:
        (data / "train.jsonl").write_text(saved)
    assert r.code != 0
    assert r.error_line.startswith("kit: error: " + message.format(config=config, home=home)), r.error_line
    assert not (home / "state" / "jobs" / "bad-input").exists()
    queue = subprocess.run(["squeue", "-h", "-n", "bad-input"], capture_output=True, text=True)
    assert queue.returncode == 0 and queue.stdout.strip() == ""
