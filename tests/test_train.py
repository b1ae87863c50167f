"""The trainer (`python -m kit.train`), its config and data checks, and `kit finetune init/merge`:
real transformers, peft and bitsandbytes on the CPU, tiny models, a few steps each."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kitrun import kit
from standin.smollm2 import build_smollm2
from standin.tiny_model import build_tiny_chat_model

from kit.errors import KitError
from kit.train import checkpoint
from kit.train.config import OPTIMIZERS, example_config, load_config

NAMES = ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Lou"]
CITIES = ["Paris", "Oslo", "Rome", "Lima", "Kyiv", "Doha", "Bern", "Baku"]
METRIC_KEYS = {"step", "total_steps", "epoch", "loss", "learning_rate", "tokens_per_s", "gpu_mem_gib", "time"}


def extraction_set(path: Path, n: int, seed: int = 0) -> Path:
    """Synthetic extraction records: "Name: X; City: Y" -> {"name": "X", "city": "Y"} (chat format)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            name, city = rng.choice(NAMES), rng.choice(CITIES)
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"Extract the fields as JSON. Name: {name}; City: {city}"},
                {"role": "assistant", "content": json.dumps({"name": name, "city": city})}]}) + "\n")
    return path


def write_config(d: Path, model: Path, **sections) -> Path:
    """A config in d (data in d/train.jsonl unless given), LoRA on the CPU; sections override."""
    cfg = {
        "model": str(model),
        "data": {"train": "train.jsonl", "format": "chat"},
        "method": "lora",
        # lm_head too: the tiny model's random head caps its logits near uniform otherwise.
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj", "lm_head"]},
        "training": {"max_steps": 12, "learning_rate": 1.0e-2, "scheduler": "constant", "warmup_steps": 0,
                     "batch_size": 4, "gradient_accumulation": 1, "seq_len": 96, "bf16": False,
                     "gradient_checkpointing": False, "seed": 7},
        "checkpoint": {"every_steps": 100, "keep": 2},
        "output_dir": "out",
    }
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    if not (d / "train.jsonl").exists():
        extraction_set(d / "train.jsonl", 24)
    path = d / "finetune.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_trainer(config: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kit.train", str(config)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def falls(losses: list[float]) -> bool:
    k = max(1, len(losses) // 4)
    return sum(losses[-k:]) / k < 0.8 * sum(losses[:k]) / k


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny_run(tiny, tmp_path_factory) -> Path:
    """A finished LoRA run on the tiny Llama through the real entry point; its output dir."""
    d = tmp_path_factory.mktemp("tiny-run")
    proc = run_trainer(write_config(d, tiny, data={"validation_split": 0.1}, checkpoint={"every_steps": 5}))
    assert proc.returncode == 0, proc.stderr
    return d / "out"


def usr1_after_steps(proc, out, steps: int, timeout: float) -> None:
    """SIGUSR1 to ``proc`` once ``out`` has logged ``steps`` metrics lines: a run stopped mid-training."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and len(metrics(out)) >= steps:
            proc.send_signal(signal.SIGUSR1)
            return
        time.sleep(0.02)

def test_lora_on_tiny_llama_learns_and_writes_the_contracted_outputs(tiny_run, tiny):
    rows = metrics(tiny_run)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all(METRIC_KEYS <= set(r) for r in rows) and rows[0]["total_steps"] == 12 and rows[0]["gpu_mem_gib"] is None
    assert falls([r["loss"] for r in rows]), [r["loss"] for r in rows]
    assert "eval_loss" in rows[4] and "eval_loss" in rows[9]  # the validation split is evaluated at checkpoints
    adapter = tiny_run / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in adapter.iterdir()}
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny)
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert {"steps", "epochs", "final_loss", "train_seconds", "method", "model", "output"} <= set(summary)
    assert summary["steps"] == 12 and summary["output"] == str(adapter) and summary["method"] == "lora"
    assert json.loads((tiny_run / "run.json").read_text())["resumed_from_step"] is None
    assert sorted(p.name for p in (tiny_run / "checkpoints").iterdir()) == ["step-00000005", "step-00000010"]


def test_prompt_tokens_are_masked_from_the_loss(tiny):
    from transformers import AutoTokenizer

    from kit.train.data import IGNORE, Record, encode

    tok = AutoTokenizer.from_pretrained(tiny)
    rec = Record("x:1", {"messages": [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Name: Ann; City: Oslo"},
                                      {"role": "assistant", "content": '{"name": "Ann"}'},
                                      {"role": "user", "content": "City?"},
                                      {"role": "assistant", "content": "Oslo"}]})
    ex = encode(rec, tok, "chat", 512, "tiny")
    learned = tok.decode([t for t in ex["labels"] if t != IGNORE])
    assert learned == '{"name": "Ann"}</s>\nOslo</s>\n', learned
    inst = encode(Record("x:2", {"instruction": "Extract.", "input": "Name: Bob", "output": "Bob"}), tok, "instruction", 512, "tiny")
    assert tok.decode([t for t in inst["labels"] if t != IGNORE]) == "Bob</s>\n"
    comp = encode(Record("x:3", {"prompt": "Name: Bob ->", "completion": " Bob"}), tok, "completion", 512, "tiny")
    assert tok.decode([t for t in comp["labels"] if t != IGNORE]) == " Bob</s>"
    assert len(encode(rec, tok, "chat", 10, "tiny")["input_ids"]) == 10


def test_resume_after_sigusr1_gives_the_same_weights_as_an_uninterrupted_run(tiny, tmp_path):
    import torch
    from safetensors.torch import load_file

    steps = 24
    sections = dict(training={"max_steps": steps, "scheduler": "cosine", "warmup_steps": 3},
                    lora={"dropout": 0.1}, checkpoint={"every_steps": 12, "keep": 3})
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    extraction_set(tmp_path / "a" / "train.jsonl", 24), extraction_set(tmp_path / "b" / "train.jsonl", 24)
    cfg_a, cfg_b = write_config(tmp_path / "a", tiny, **sections), write_config(tmp_path / "b", tiny, **sections)

    proc = subprocess.Popen([sys.executable, "-m", "kit.train", str(cfg_b)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    out_b = tmp_path / "b" / "out"
    usr1_after_steps(proc, out_b, 3, timeout=120)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    stopped = metrics(out_b)[-1]["step"]
    assert 3 <= stopped < steps and "SIGUSR1: stopped after step" in _
    assert checkpoint.latest(out_b).name == f"step-{stopped:08d}" and not (out_b / "summary.json").exists()
    saved_opt = torch.load(checkpoint.latest(out_b) / "optimizer.pt", weights_only=False)

    resumed = run_trainer(cfg_b)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out_b / "run.json").read_text())["resumed_from_step"] == stopped
    assert [r["step"] for r in metrics(out_b)] == list(range(1, steps + 1))  # each step once

    plain = run_trainer(cfg_a)
    assert plain.returncode == 0, plain.stderr
    out_a = tmp_path / "a" / "out"
    # The same optimizer state at the stop step (the uninterrupted run's checkpoint of that step is
    # gone, so compare the loss curve there) and at the end, and the same final adapter.
    assert [round(r["loss"], 4) for r in metrics(out_a)] == [round(r["loss"], 4) for r in metrics(out_b)]
    end_a = torch.load(out_a / "checkpoints" / f"step-{steps:08d}" / "optimizer.pt", weights_only=False)
    end_b = torch.load(out_b / "checkpoints" / f"step-{steps:08d}" / "optimizer.pt", weights_only=False)
    for key in end_a["state"]:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(end_a["state"][key][name], end_b["state"][key][name], atol=1e-6)
    assert int(saved_opt["state"][0]["step"]) == stopped
    wa, wb = load_file(out_a / "adapter" / "adapter_model.safetensors"), load_file(out_b / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_an_interrupted_checkpoint_is_never_picked(tiny, tmp_path):
    cfg = write_config(tmp_path, tiny, training={"max_steps": 4}, checkpoint={"every_steps": 2, "keep": 5})
    assert run_trainer(cfg).returncode == 0
    out = tmp_path / "out"
    again = run_trainer(cfg)  # a finished run is left alone
    assert again.returncode == 0 and "nothing to do" in again.stdout
    # Simulate a later run killed while writing: a temp dir, and a step dir without its marker.
    (out / "summary.json").unlink()
    half = out / "checkpoints" / ".step-00000006.tmp-12345"
    half.mkdir()
    (half / "trainable.safetensors").write_bytes(b"garbage")
    torn = out / "checkpoints" / "step-00000008"
    torn.mkdir()
    (torn / "optimizer.pt").write_bytes(b"garbage")
    assert checkpoint.latest(out).name == "step-00000004"
    write_config(tmp_path, tiny, training={"max_steps": 10}, checkpoint={"every_steps": 2, "keep": 5})
    proc = run_trainer(cfg)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "run.json").read_text())["resumed_from_step"] == 4
    assert not half.exists() and "removed .step-00000006.tmp-12345" in proc.stdout
    assert [r["step"] for r in metrics(out)] == list(range(1, 11))


def test_qlora_trains_on_the_cpu_with_4bit_nf4_weights(tiny, tmp_path):
    """bitsandbytes on a CPU with AVX512-BF16 repacks 4-bit weights on an eval-mode no-grad forward;
    backward then stops at the first 4-bit layer and the adapters before it silently stop learning.
    The validation pass at every checkpoint (from step 2 on) must not trigger it."""
    from safetensors.torch import load_file

    cfg = write_config(tmp_path, tiny, method="qlora", data={"validation_split": 0.1},
                       training={"max_steps": 12, "learning_rate": 5.0e-3}, checkpoint={"every_steps": 2, "keep": 10})
    proc = run_trainer(cfg)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    q = json.loads((out / "run.json").read_text())["quantization"]
    assert q["load_in_4bit"] and q["bnb_4bit_quant_type"] == "nf4" and q["bnb_4bit_use_double_quant"]
    losses = [r["loss"] for r in metrics(out)]
    assert falls(losses[2:]), str(losses)
    first = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"
    at_2 = load_file(out / "checkpoints" / "step-00000002" / "trainable.safetensors")[first]
    at_12 = load_file(out / "checkpoints" / "step-00000012" / "trainable.safetensors")[first]
    assert (at_12 - at_2).abs().max() > 1e-4  # the first layer's adapter still learns after validation
    assert "autograd kernel was not registered" not in proc.stderr
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    return build_smollm2(tmp_path_factory.mktemp("smollm2") / "model")


def test_lora_on_smollm2_learns_the_extraction_task(smollm2, tmp_path):
    extraction_set(tmp_path / "train.jsonl", 16)
    cfg = write_config(tmp_path, smollm2, lora={"target_modules": ["q_proj", "v_proj"]},
                       training={"max_steps": 8, "learning_rate": 2.0e-3, "batch_size": 2})
    proc = run_trainer(cfg)
    assert proc.returncode == 0, proc.stderr
    losses = [r["loss"] for r in metrics(tmp_path / "out")]
    assert falls(losses), losses
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()


def test_merged_model_gives_the_logits_of_base_plus_adapter(tiny_run, tiny, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    r = kit("finetune", "merge", str(tiny_run / "adapter"), "--out", str(tmp_path / "merged"))
    assert r.code == 0, r.err
    ids = torch.tensor([[0, 40, 41, 42, 100, 200, 7]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny).eval()
        plain = base(ids).logits
        tuned = PeftModel.from_pretrained(base, tiny_run / "adapter").eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()(ids).logits
    assert not torch.allclose(plain, tuned, atol=1e-3)  # the adapter changes the model
    assert torch.allclose(merged, tuned, atol=1e-5)
    again = kit("finetune", "merge", str(tiny_run / "adapter"), "--out", str(tmp_path / "merged"))
    assert again.code != 0 and "already exists" in again.error_line
    assert "not an adapter directory" in kit("finetune", "merge", str(tmp_path), "--out", str(tmp_path / "m2")).error_line


# --- bad input: one clear line each -----------------------------------------------------------

def test_init_writes_an_example_that_loads_and_never_overwrites(tmp_path):
    r = kit("finetune", "init", "ft.yaml", cwd=tmp_path)
    assert r.code == 0 and (tmp_path / "ft.yaml").read_text() == example_config()
    assert "already exists" in kit("finetune", "init", "ft.yaml", cwd=tmp_path).error_line
    with pytest.raises(KitError, match=r"data\.train: no such data file .*data/train\.jsonl"):
        load_config(tmp_path / "ft.yaml")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("")
    cfg = load_config(tmp_path / "ft.yaml")
    assert cfg.method == "lora" and cfg.output_dir == str(tmp_path / "runs" / "my-lora")
    assert cfg.training.gradient_accumulation == 8 and cfg.lora.target_modules == "all-linear"


@pytest.mark.parametrize("change, message", [
    ({"trainig": {}}, r"ft\.yaml: trainig: unknown key \(allowed here: model, data, output_dir, method"),
    ({"training": {"batch_size": "four"}}, r"ft\.yaml: training\.batch_size: Expected 'int', got 'str'"),
    ({"method": "dora"}, r"ft\.yaml: method: Invalid enum value 'dora' \(allowed: full, lora, qlora\)"),
    ({"training": {"epochs": 1, "max_steps": 5}}, r"ft\.yaml: training: give epochs or max_steps, not both"),
    ({"data": {"train": "missing.jsonl"}}, r"ft\.yaml: data\.train: no such data file .*missing\.jsonl"),
    ({"lora": {"dropout": 1.5}}, r"ft\.yaml: lora\.dropout: Expected 'float' < 1"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, change, message):
    (tmp_path / "train.jsonl").write_text("")
    cfg = {"model": "org/model", "data": {"train": "train.jsonl"}, "output_dir": "out", **change}
    if "data" in change:
        cfg["data"] = change["data"]
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(KitError, match=message) as e:
        load_config(tmp_path / "ft.yaml")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("lines, message", [
    (['{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}', "{not json"],
     r"train\.jsonl:2: not a JSON object"),
    (['{"messages": [{"role": "user", "content": "a"}]}'], r"train\.jsonl:1: .*needs an \"assistant\" message"),
    (['{"messages": [{"role": "assistant", "content": "b"}]}'], r"train\.jsonl:1: .*needs a \"user\" message before"),
    (['{"messages": [{"role": "tool", "content": "x"}, {"role": "user", "content": "a"}, '
      '{"role": "assistant", "content": "b"}]}'], r"train\.jsonl:1: .*chat template refuses this record: Unknown role: tool"),
])
def test_bad_data_is_one_line_with_file_and_line(tiny, tmp_path, lines, message):
    from transformers import AutoTokenizer

    from kit.train.data import build_examples, read_records

    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(KitError, match=message):
        build_examples(read_records([str(tmp_path / "train.jsonl")], "chat"), AutoTokenizer.from_pretrained(tiny),
                       "chat", 64, False, "tiny")


def test_trainer_reports_bad_input_in_one_line_and_exits_2(tiny, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "a"}, '
                                          '{"role": "assistant", "content": "b"}]}\n\n{"messages": oops}\n')
    proc = run_trainer(write_config(tmp_path, tiny))
    lines = [line for line in proc.stderr.splitlines() if line.startswith("kit: error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(lines) == 1 and f"{tmp_path / 'train.jsonl'}:3: not a JSON object" in lines[0], proc.stderr
    proc = run_trainer(write_config(tmp_path, tiny, training={"seq_len": 0}))
    assert proc.returncode == 2 and "training.seq_len: Expected 'int' >= 1" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_optimizer_and_method_names_are_the_planners():
    from kit.plan.memory import constants

    assert set(OPTIMIZERS) == set(constants()["finetune"]["optimizers"])
    from kit.train.config import METHODS

    assert set(METHODS) == set(constants()["finetune"]["methods"])


def test_config_module_imports_light():
    code = ("import sys\nfrom kit.train.config import load_config\nimport kit.train.data\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


# --- several processes: FSDP2 on the CPU (gloo), the same code as on GPUs (NCCL) --------------------

SHARDED = {"training": {"max_steps": 12, "scheduler": "cosine", "warmup_steps": 2},
           "checkpoint": {"every_steps": 6, "keep": 3}}


def launch(config: Path, nproc: int, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kit.train", str(config), "--nproc", str(nproc)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, **kw)


def finish(proc: subprocess.Popen, timeout: float = 180) -> subprocess.CompletedProcess:
    """Its end; on a timeout (ranks that disagree hang in a collective) its workers are killed too:
    they run in sessions of their own."""
    import psutil

    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "adapter" / "adapter_model.safetensors")


def same_tensors(a: dict, b: dict, atol: float = 1e-4) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=atol) for k in a)


@pytest.fixture(scope="module")
def one_process(tiny, tmp_path_factory) -> Path:
    """The reference: one process, batch_size 4 (the global batch of two processes with 2 each)."""
    d = tmp_path_factory.mktemp("one-process")
    proc = run_trainer(write_config(d, tiny, **{**SHARDED, "training": {**SHARDED["training"], "batch_size": 4}}))
    assert proc.returncode == 0, proc.stderr
    return d / "out"


def test_two_processes_shard_the_model_and_train_like_one_with_the_same_global_batch(tiny, one_process, tmp_path):
    """Step k's examples over both ranks are those of one process with twice the batch
    (trainer.Schedule), and the loss is the mean over all ranks' answer tokens, so the adapter is
    the same up to float rounding (different padding and summation order). A per-rank token mean
    would be off by ~0.08 here."""
    cfg = write_config(tmp_path, tiny, **{**SHARDED, "training": {**SHARDED["training"], "batch_size": 2}})
    proc = finish(launch(cfg, 2))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    run = json.loads((out / "run.json").read_text())
    fsdp = run["fsdp"]
    assert run["processes"] == 2 and fsdp["backend"] == "gloo" and fsdp["device"] == "cpu"
    shards = fsdp["param_elements_per_process"]  # each rank holds about half of every tensor
    assert len(shards) == 2 and sum(shards) == fsdp["param_elements"] and max(shards) < 0.55 * fsdp["param_elements"]
    # Only rank 0 writes and speaks: each step once, one result, no temp directories.
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 13)) and falls([r["loss"] for r in rows])
    assert proc.stdout.count("kit.train: finished 12 steps") == 1 and "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "checkpoints", "metrics.jsonl", "run.json", "summary.json"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000006", "step-00000012"]
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny)
    assert [round(r["loss"], 4) for r in rows] == [round(r["loss"], 4) for r in metrics(one_process)]
    assert same_tensors(adapter(out), adapter(one_process))


def test_sigusr1_stops_both_processes_at_one_step_and_a_rerun_resumes_from_the_sharded_checkpoint(
        tiny, one_process, tmp_path):
    """USR1 to the launcher (what the job forwards): both ranks finish the same step, write one
    complete sharded checkpoint and the launcher exits 75; the rerun resumes there and ends with
    the one-process run's adapter and optimizer state."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    cfg = write_config(tmp_path, tiny, **{**SHARDED, "training": {**SHARDED["training"], "batch_size": 2}})
    out = tmp_path / "out"
    proc = launch(cfg, 2)
    usr1_after_steps(proc, out, 2, timeout=180)
    stopped_run = finish(proc)
    assert stopped_run.returncode == 75, stopped_run.stderr
    stopped = metrics(out)[-1]["step"]
    assert 2 <= stopped < 12 and stopped_run.stdout.count(f"SIGUSR1: stopped after step {stopped}") == 1
    assert "Traceback" not in stopped_run.stderr and "kit: error" not in stopped_run.stderr
    last = checkpoint.latest(out)
    assert last.name == f"step-{stopped:08d}" and not (out / "summary.json").exists() and not (out / "adapter").exists()
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "rng-0.pt", "rng-1.pt", "scheduler.pt", "state.json"} == \
        {p.name for p in last.iterdir()}  # a shard from each rank, nothing gathered
    assert json.loads((last / "state.json").read_text())["processes"] == 2
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]

    resumed = finish(launch(cfg, 2))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from step-{stopped:08d}" in resumed.stdout
    assert json.loads((out / "run.json").read_text())["resumed_from_step"] == stopped
    assert [r["step"] for r in metrics(out)] == list(range(1, 13))  # each step once
    assert [round(r["loss"], 4) for r in metrics(out)] == [round(r["loss"], 4) for r in metrics(one_process)]
    assert same_tensors(adapter(out), adapter(one_process))
    # The sharded checkpoint of the last step holds the one-process run's weights and Adam moments.
    dcp_to_torch_save(out / "checkpoints" / "step-00000012", tmp_path / "end.pt")
    end = torch.load(tmp_path / "end.pt", weights_only=False)
    ref_dir = one_process / "checkpoints" / "step-00000012"
    ref_opt = torch.load(ref_dir / "optimizer.pt", weights_only=False)["state"]
    from safetensors.torch import load_file

    ref_weights = load_file(ref_dir / "trainable.safetensors")
    assert same_tensors(end["model"], ref_weights)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # The one-process optimizer numbers the trainable parameters in the model's order.
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), one_process / "adapter", is_trainable=True)
    names = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert sorted(names) == sorted(ref_weights) and len(ref_opt) == len(names)
    for i, name in enumerate(names):
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(end["optimizer"]["state"][name][moment], ref_opt[i][moment], atol=1e-5), (name, moment)


@pytest.mark.parametrize("method, result, weights", [("full", "model", "model.safetensors"),
                                                     ("qlora", "adapter", "adapter_model.safetensors")])
def test_full_fine_tuning_and_qlora_shard_like_lora(tiny, tmp_path, method, result, weights):
    """Full fine-tuning gathers every weight for the saved model; QLoRA shards the packed 4-bit
    weights (bitsandbytes restores their quantization state after each gather) and skips the fp32
    upcast. Both end where one process with the same global batch ends."""
    from safetensors.torch import load_file

    sections = {"method": method, "training": {"max_steps": 4, "learning_rate": 5.0e-3}}
    if method == "full":  # with the LM head tied to the embeddings, as SmolLM2's and Llama-3.2's are
        tiny = build_tiny_chat_model(tmp_path / "tied", tie_word_embeddings=True)
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    one = write_config(tmp_path / "one", tiny, **{**sections, "training": {**sections["training"], "batch_size": 4}})
    two = write_config(tmp_path / "two", tiny, **{**sections, "training": {**sections["training"], "batch_size": 2}})
    sharded = launch(two, 2)
    alone = run_trainer(one)
    sharded = finish(sharded)
    assert alone.returncode == 0 and sharded.returncode == 0, alone.stderr + sharded.stderr
    a, b = (load_file(tmp_path / d / "out" / result / weights) for d in ("one", "two"))
    base = load_file(tiny / "model.safetensors")
    assert same_tensors(a, b) and (method != "full" or not same_tensors(a, base, atol=1e-3))
    run = json.loads((tmp_path / "two" / "out" / "run.json").read_text())
    assert run["processes"] == 2 and max(run["fsdp"]["param_elements_per_process"]) < 0.55 * run["fsdp"]["param_elements"]
    assert [r["loss"] for r in metrics(tmp_path / "one" / "out")] == \
        pytest.approx([r["loss"] for r in metrics(tmp_path / "two" / "out")], abs=1e-4)


def test_rank_0_alone_reads_the_base_model_and_the_other_rank_gets_its_weights_and_buffers(tmp_path):
    """Sharded LoRA loads as accelerate's cpu_ram_efficient_loading: rank 0 reads the weights,
    rank 1 builds the model on the meta device, and after sharding receives rank 0's weights
    and buffers. So rank 1's peak host memory stays below rank 0's by about the model's size
    (loading on both ranks, they differ by ~10 % of it), and both end with the model one
    process loads: the checkpoint's weights, the same LoRA init (the seed), the rotary
    inv_freq (a buffer in no state dict) and the same trainable parameters."""
    import torch
    from safetensors.torch import load_file
    from transformers import set_seed

    from kit.train.model import load_model

    model = build_tiny_chat_model(tmp_path / "model", hidden_size=768, intermediate_size=2048, num_hidden_layers=4,
                                  num_attention_heads=6, num_key_value_heads=3)  # 107 MB of fp32 weights
    config, out = write_config(tmp_path, model), tmp_path / "load"
    out.mkdir()
    proc = finish(subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                    "2", str(Path(__file__).parent / "sharded_load.py"), str(config), str(out)],
                                   text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"}), timeout=120)
    assert proc.returncode == 0, proc.stderr
    on_disk = load_file(model / "model.safetensors")
    model_bytes = sum(t.numel() * t.element_size() for t in on_disk.values())
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert (ranks[0]["peak_rss_kib"] - ranks[1]["peak_rss_kib"]) * 1024 > 0.5 * model_bytes, ranks

    set_seed(7)  # the config's seed: one process's model, adapters included
    alone = load_model(load_config(config), torch.device("cpu"))
    gathered, expected = load_file(out / "weights.safetensors"), alone.state_dict()
    assert gathered.keys() == expected.keys()
    for name, t in gathered.items():
        assert torch.equal(t, expected[name]), name
        if "lora_" not in name:
            assert torch.equal(t, on_disk[name.removeprefix("base_model.model.").replace(".base_layer", "")]), name
    buffers = dict(alone.named_buffers())
    assert any(name.endswith("inv_freq") for name in buffers)
    for r in (0, 1):
        mine = load_file(out / f"buffers-{r}.safetensors")
        assert mine.keys() == buffers.keys() and all(torch.equal(mine[n], buffers[n]) for n in mine), r
        assert ranks[r]["requires_grad"] == {n: p.requires_grad for n, p in alone.named_parameters()}
        assert set(ranks[r]["trainable"]) == {n for n, p in alone.named_parameters() if p.requires_grad}


def test_a_checkpoint_resumes_only_with_the_processes_that_wrote_it(tmp_path):
    from types import SimpleNamespace

    step = tmp_path / "checkpoints" / "step-00000004"
    step.mkdir(parents=True)
    (step / "state.json").write_text(json.dumps({"step": 4, "processes": 2}))
    with pytest.raises(KitError, match=r"step-00000004: written by 2 processes, resumed with 1; resume with --nproc 2"):
        checkpoint.load(step, None, None, None, SimpleNamespace(world=1, sharded=False), set())


def test_bad_data_with_two_processes_is_one_line_and_exit_2(tiny, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "a"}, '
                                          '{"role": "assistant", "content": "b"}]}\n{"messages": oops}\n')
    proc = finish(launch(write_config(tmp_path, tiny), 2))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kit: error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "FailedError" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and f"{tmp_path / 'train.jsonl'}:2: not a JSON object" in errors[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_on_a_gpu_node_each_process_needs_its_own_gpu(tiny, tmp_path, monkeypatch, capsys):
    """The launcher and each process refuse more processes than visible GPUs (no GPU here: torch's
    answers are replaced); without GPUs the processes shard on the CPU instead."""
    import torch

    from kit.train.dist import Runtime
    from kit.train.launch import launch as launch_here

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert launch_here(str(write_config(tmp_path, tiny)), 2) == 2
    assert capsys.readouterr().err == "kit: error: --nproc 2: one process per GPU, and this node shows 1 GPUs\n"
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(KitError, match="2 processes on this node but 1 GPUs visible; run one process per GPU"):
        Runtime()


def test_the_launchers_status_is_the_workers():
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from kit.train.launch import status

    def failed(**codes):
        return {"failures": {int(r[1:]): ProcessFailure(int(r[1:]), 100 + int(r[1:]), c, "/nonexistent")
                             for r, c in codes.items()}}

    assert status({"status": 0}) == 0
    assert status(failed(r1=75, r0=-15)) == 75  # rank 0 stopped by the launcher as it was exiting
    assert status(failed(r0=2, r1=-15)) == 2
    assert status(failed(r1=1, r0=-15)) == 1
