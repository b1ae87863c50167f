"""A fine-tuning job on the real local Slurm, as an ordinary user: kit's real trainer (on the host,
through the runtime stand-in) trains a tiny model, is sent USR1 like Slurm does before the
walltime, checkpoints, requeues itself, resumes and finishes; `kit status` shows its progress
all along, and its record and log survive the requeue. Then its adapter is served."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from standin.runtime import MAGIC
from standin.site import cancel_jobs, standin_site
from test_serve_users import OWNER, as_user, give, kit_as, users_top

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 120, 10


def finetune_image(images: Path) -> None:
    """The fine-tuning image as the runtime stand-in runs it: kit (this checkout) and the test
    environment's Python, torch, transformers and peft play the image's."""
    images.mkdir(parents=True, exist_ok=True)
    python_bin = Path(sys.executable).parent
    (images / "finetune-0.1.0.sif").write_text(
        f"{MAGIC}\nBootstrap: docker\n%environment\n    export PATH={python_bin}:/usr/bin:/bin\n"
        f"    export PYTHONPATH={ROOT}\n%runscript\n    exec python -m kit.train \"$@\"\n")


def write_run(home: Path, model: Path) -> Path:
    data = home / "data"
    data.mkdir()
    with (data / "train.jsonl").open("w") as f:
        for i in range(64):
            messages = [{"role": "user", "content": f"What is {i} plus one?"},
                        {"role": "assistant", "content": f"{i} plus one is {i + 1}."}]
            f.write(json.dumps({"messages": messages}) + "\n")
    config = home / "legal-lora.yaml"
    config.write_text(
        f"model: {model}\n"
        "data: {train: data/train.jsonl, format: chat}\n"
        "method: lora\n"
        "lora: {r: 8, alpha: 16}\n"
        f"training: {{max_steps: {STEPS}, batch_size: 2, seq_len: 64, learning_rate: 1.0e-3, "
        "gradient_checkpointing: false, bf16: false}\n"
        f"checkpoint: {{every_steps: {EVERY}, keep: 2}}\n"
        "output_dir: runs/legal-lora\n")
    return config


@pytest.fixture(scope="module")
def lab(slurm_cluster):
    top = users_top("kit-ft-users-")
    home = top / OWNER
    finetune_image(home / "images")
    setup = standin_site(home)  # the tiny model, stand-in images, the lock and a user site layer
    setup["env"]["HOME"] = str(home)
    config = write_run(home, setup["model"])
    give(OWNER, home)
    yield {"home": home, "env": setup["env"], "model": setup["model"], "config": config}
    cancel_jobs(home)  # leave nothing running
    shutil.rmtree(top, ignore_errors=True)


def status(lab, name: str = "lab-ft") -> dict:
    r = kit_as(OWNER, lab["env"], "status", name, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def poll(lab, until, timeout: float = 180, name: str = "lab-ft") -> list[dict]:
    """`kit status --json` every half second until ``until(status)``; every status seen."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(status(lab, name))
        if until(seen[-1]):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"not reached in {timeout} s; last status: {seen[-1] if seen else None}")


def start_now(job_id: str) -> None:
    """Slurm holds a requeued job back for a while before it may start again: not this test's
    business. Not within the second of the requeue, though: slurmd takes a job started in the second
    its old credential was revoked for the old one and kills it ("Job credential revoked")."""
    time.sleep(1.1)
    update = as_user(OWNER, "scontrol", "update", f"JobId={job_id}", "StartTime=now")
    assert update.returncode == 0, update.stderr


def slurm_job(job_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout


def test_a_job_checkpoints_requeues_resumes_and_finishes(lab):
    r = kit_as(OWNER, lab["env"], "finetune", str(lab["config"]), "--time", "00:30:00", "--name", "lab-ft", "--json")
    assert r.returncode == 0, r.stderr
    assert "training.bf16 false: the plan counts bf16 weights and compute" in r.stderr  # fp32 on the CPU stand-in
    record = json.loads(r.stdout)
    job_id, job_dir = record["job_id"], lab["home"] / "state" / "jobs" / "lab-ft"
    out = lab["home"] / "runs" / "legal-lora"
    assert record["task"] == "finetune" and record["requeue"] is True and record["output_dir"] == str(out)

    # Training, with its progress in `kit status`; then USR1 to the batch shell, as Slurm sends it
    # before the walltime.
    before = poll(lab, lambda s: (s["progress"] or {}).get("step", 0) >= EVERY + 5)
    p = before[-1]["progress"]
    assert before[-1]["state"] == "RUNNING" and p["total_steps"] == STEPS and p["loss"] > 0
    assert p["tokens_per_s"] > 0 and p["eta_s"] is not None and not p["finished"]
    signal = as_user(OWNER, "scancel", "--signal=USR1", "--batch", job_id)
    assert signal.returncode == 0, signal.stderr

    # The trainer checkpoints and exits 75; the job requeues itself: the same job, pending again.
    # Reason BeginTime: Slurm has processed the first run's end (it sets the hold then); forcing the
    # start before that races the first run's completion message.
    requeued = poll(lab, lambda s: s["state"].startswith("PENDING") and s["reason"] == "BeginTime", timeout=120)
    assert requeued[-1]["job_id"] == job_id and not requeued[-1]["progress"]["finished"]
    assert "Restarts=1" in slurm_job(job_id)
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    interrupted_at = int(checkpoints[-1].split("-")[1])
    assert p["step"] <= interrupted_at < STEPS  # written on the signal, mid-run
    start_now(job_id)

    # `kit wait` waits for the end of training (not for "ready"), across the pending spell.
    w = kit_as(OWNER, lab["env"], "wait", "lab-ft", "--timeout", "240", timeout=300)
    assert w.returncode == 0, w.stderr
    assert w.stdout.strip() == str(out)
    assert "finished" in w.stderr
    final = poll(lab, lambda s: s["state"] == "COMPLETED", timeout=60)[-1]  # the job's last lines
    assert final["progress"]["finished"] and final["progress"]["resumed_from_step"] == interrupted_at
    assert final["progress"]["step"] == STEPS and final["job_id"] == job_id
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS
    assert (out / "adapter" / "adapter_config.json").is_file()

    # One record, one log with both runs in it (the log is appended, never truncated).
    log = (job_dir / f"slurm-{job_id}.out").read_text()
    assert "run 1 of job" in log and "run 2 of job" in log
    assert log.index("USR1 received") < log.index("requeueing job") < log.index("run 2 of job")
    assert json.loads((job_dir / "record.json").read_text())["job_id"] == job_id
    assert not (job_dir / "failed").exists()
    logs = kit_as(OWNER, lab["env"], "logs", "lab-ft", "-n", "1")
    assert logs.returncode == 0 and f"training finished: {out}" in logs.stdout


def test_the_adapter_is_served_and_a_foreign_base_is_refused(lab):
    out = lab["home"] / "runs" / "legal-lora"
    # This test uses the run the test above trains: if that failed, this fails too (never a skip).
    assert (out / "summary.json").exists(), "the fine-tuning run of the test above did not finish"
    for engine, flag in (("tgi", "--lora-adapters legal-lora="), ("vllm", "--max-lora-rank 8 --lora-modules legal-lora=")):
        r = kit_as(OWNER, lab["env"], "serve", str(lab["model"]), "--engine", engine, "--adapter", str(out), "--dry-run")
        assert r.returncode == 0, r.stderr
        assert f"{flag}{out}/adapter" in r.stdout.replace(" \\\n  ", " ")
    # Another base: one line, nothing submitted (no record, no job).
    r = kit_as(OWNER, lab["env"], "serve", "meta-llama/Llama-3.1-8B-Instruct", "--adapter", str(out),
               "--name", "wrong-base")
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"kit: error: --adapter {out}: trained on {lab['model']}, not on the served model "
                               "meta-llama/Llama-3.1-8B-Instruct"), r.stderr
    assert not (lab["home"] / "state" / "jobs" / "wrong-base").exists()
    queue = subprocess.run(["squeue", "-h", "-n", "wrong-base"], capture_output=True, text=True)
    assert queue.stdout.strip() == ""


def test_a_two_gpu_job_trains_sharded_checkpoints_on_usr1_requeues_and_resumes(lab):
    """`--gpus 2`: the job runs `python -m kit.train CONFIG --nproc 2` (here two CPU processes over
    gloo, the GPUs being fake); the forwarded USR1 stops both at one step with a sharded checkpoint,
    the launcher's 75 requeues the job, and the next run resumes with two processes again."""
    config = lab["config"].with_name("sharded-lora.yaml")
    config.write_text(lab["config"].read_text().replace("runs/legal-lora", "runs/sharded-lora"))
    r = kit_as(OWNER, lab["env"], "finetune", str(config), "--time", "00:30:00", "--gpus", "2", "--name", "lab-ft2",
               "--json")
    assert r.returncode == 0, r.stderr
    job_id, out = json.loads(r.stdout)["job_id"], lab["home"] / "runs" / "sharded-lora"
    job_dir = lab["home"] / "state" / "jobs" / "lab-ft2"
    assert "finetune.yaml --nproc 2 &" in (job_dir / "job.sbatch").read_text()
    poll(lab, lambda s: (s["progress"] or {}).get("step", 0) >= EVERY + 5, name="lab-ft2")
    assert as_user(OWNER, "scancel", "--signal=USR1", "--batch", job_id).returncode == 0
    poll(lab, lambda s: s["state"].startswith("PENDING"), timeout=120, name="lab-ft2")
    interrupted_at = int(max(p.name for p in (out / "checkpoints").iterdir()).split("-")[1])
    assert EVERY + 5 <= interrupted_at < STEPS
    start_now(job_id)
    w = kit_as(OWNER, lab["env"], "wait", "lab-ft2", "--timeout", "240", timeout=300)
    assert w.returncode == 0, w.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["processes"] == 2 and run["resumed_from_step"] == interrupted_at
    assert len(run["fsdp"]["param_elements_per_process"]) == 2
    assert json.loads((out / "summary.json").read_text())["steps"] == STEPS
    log = (job_dir / f"slurm-{job_id}.out").read_text()
    assert log.count(f"SIGUSR1: stopped after step {interrupted_at}") == 1 and "requeueing job" in log
    assert "Traceback" not in log
