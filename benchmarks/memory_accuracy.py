"""Compare kit's memory model with public measurements (benchmarks/memory_cases.yaml).

Each case cites its source (a vLLM/TGI start-up log, a fine-tuning memory table) and quotes
the figure. For each, kit computes the same quantity from the model's config and the stated
settings, and this prints a Markdown table with the error per case. Run:

    .venv/bin/python benchmarks/memory_accuracy.py > /tmp/accuracy.md
"""

from __future__ import annotations

import copy
import inspect
import statistics
import sys
from pathlib import Path

import yaml

from kit.plan.memory import GIB, constants, finetune_breakdown, lora_trainable, serve_breakdown, weight_bytes
from kit.models import catalog
from kit.models.resolve import from_catalog
from kit.engines import engines

HERE = Path(__file__).resolve().parent

# Total memory per GPU as torch/vLLM report it (GiB). H100/A100-80 as in the site files; L40S
# 46068 MiB and A10G 23028 MiB are nvidia-smi's memory.total for those cards.
GPU_GIB = {"H100-80GB": 79.6, "A100-80GB": 79.3, "A100-40GB": 39.6, "A100": 79.3, "L40S": 44.99, "A10G": 22.49,
           "RTX-4090": 23.99, None: 79.22}

# Cases name a few checkpoints that kit's catalog holds under another id with the same layout.
SAME_LAYOUT = {
    "meta-llama/Meta-Llama-3-8B": "meta-llama/Llama-3.1-8B",
    "meta-llama/Meta-Llama-3.1-405B-Instruct-FP8": "meta-llama/Llama-3.1-405B-Instruct",
}

TORCHTUNE_TARGETS = {"q": "q_proj", "v": "v_proj", "q_proj": "q_proj", "v_proj": "v_proj", "k_proj": "k_proj",
                     "output_proj": "o_proj", "o_proj": "o_proj", "gate_proj": "gate_proj", "up_proj": "up_proj",
                     "down_proj": "down_proj", "mlp": ["gate_proj", "up_proj", "down_proj"]}


def layout_of(model_id: str):
    model_id = SAME_LAYOUT.get(model_id, model_id)
    entry = catalog.lookup(model_id)
    if entry is None:
        raise SystemExit(f"{model_id}: not in kit's catalog")
    return from_catalog(model_id, entry).layout


def measured_gib(case: dict) -> float:
    unit = case["unit"]
    value = float(case["value"])
    if unit == "bytes":
        return value / GIB
    if unit in ("GiB", "GB"):  # vLLM's "GB" is bytes / 2**30 (see each case's notes)
        return value
    if unit == "gpu_total":  # the longest run that fits: its peak is the whole GPU
        return GPU_GIB[case["gpu"]]
    if unit == "percent":  # a share of the GPU's total memory (a W&B / nvidia-smi utilisation figure)
        return value / 100 * GPU_GIB[case["gpu"]]
    raise ValueError(unit)


def serve_estimate(case: dict) -> tuple[float, str]:
    lay = layout_of(case["model"])
    s = case["settings"] or {}
    n = case["gpus"]
    quantize = {"fp8": "fp8", None: "none"}.get(case["quantize"], case["quantize"] or "none")
    if case["metric"] == "weights_loaded":
        return weight_bytes(lay, n, 2, quantize) / GIB, "GiB"
    eng = copy.deepcopy(engines()[case["engine"]])
    if case["engine"] == "vllm" and s.get("gpu_memory_utilization"):
        eng["memory"]["fraction"] = s["gpu_memory_utilization"]
    gpu_gib = GPU_GIB[case["gpu"]]
    prefill = s.get("max_num_batched_tokens") or s.get("max_batch_prefill_tokens") or (
        eng["prefill"].get("tokens_large_gpu") if case["gpu"] == "H100-80GB" and case["engine"] == "vllm"
        else eng["prefill"]["tokens"])
    b = serve_breakdown(lay, n=n, dtype_bytes=2, quantize=quantize, kv_tokens=0, prefill_tokens=prefill,
                        gpu_gib=gpu_gib, engine=eng)
    tokens = b.extra["kv_capacity_tokens"]
    if case["metric"] == "kv_cache_tokens":
        return tokens, "tokens"
    if case["metric"] == "kv_cache_blocks":
        return tokens // s.get("block_size", 16), "blocks"
    if case["metric"] == "kv_cache_gib":
        return tokens * b.extra["kv_bytes_per_token"] / GIB, "GiB"
    raise ValueError(case["metric"])


# What a case's optimizer is called in its source -> the optimizer kit plans.
OPTIMIZERS = {None: "adamw", "AdamW": "adamw", "torch.optim.AdamW": "adamw", "adamw_torch": "adamw",
              "paged_adamw_8bit": "paged_adamw_8bit", "paged_adamw_32bit": "paged_adamw_32bit",
              "adamw_8bit": "adamw_8bit"}


def finetune_estimate(case: dict) -> tuple[float, str]:
    """The case's peak per GPU with kit's fine-tune terms and the case's own settings: GPUs (FSDP or
    ZeRO-3 sharding), attention, loss, load dtype. Keyword arguments the planner does not take
    (an older kit) are left out, so the same cases can be scored before and after a change."""
    lay = layout_of(case["model"])
    s = case["settings"]
    method = s["method"]
    targets = None
    if s.get("lora_targets") and s["lora_targets"] != "all-linear":
        targets = []
        for t in s["lora_targets"]:
            mapped = TORCHTUNE_TARGETS[t]
            targets += mapped if isinstance(mapped, list) else [mapped]
    r = s.get("lora_r") or 8
    trainable = lay.params if method == "full" else lora_trainable(lay, r, targets)
    grad_ckpt = bool(s.get("grad_ckpt")) if s.get("grad_ckpt") is not None else True
    trainer = {}
    if s.get("attention"):
        trainer["attention"] = s["attention"]
    if s.get("loss_impl"):
        trainer["loss"] = s["loss_impl"]
    if s.get("lora_dropout") is not None:
        trainer["lora_dropout"] = bool(s["lora_dropout"])
    if s.get("kbit_upcast") is not None:
        trainer["kbit_upcast"] = s["kbit_upcast"]
    kwargs = dict(n=case["gpus"], method=method, seq_len=s["seq_len"],
                  batch_size=s.get("batch_size") or s.get("micro_batch_size") or 1, grad_ckpt=grad_ckpt,
                  trainable=trainable, optimizer=OPTIMIZERS[s.get("optimizer")], gpu_gib=GPU_GIB[case["gpu"]],
                  lora_r=0 if method == "full" else r, lora_targets=targets, trainer=trainer,
                  load_bytes=s.get("load_bytes"), outputs_kept=bool(s.get("outputs_kept")))
    accepted = inspect.signature(finetune_breakdown).parameters
    b = finetune_breakdown(lay, **{k: v for k, v in kwargs.items() if k in accepted})
    allocated = sum(v for k, v in b.terms.items() if k != "overhead")
    if case["metric"] == "peak_allocated":
        return allocated / GIB, "GiB"
    if case["metric"] == "peak_reserved":
        c = constants()["finetune"]
        frag = c.get("fragmentation_sharded", c["fragmentation"]) if case["gpus"] > 1 else c["fragmentation"]
        return allocated * (1 + frag) / GIB, "GiB"
    if case["metric"] == "nvidia_smi_used":  # everything: context, NCCL buffers, allocator cache
        return b.total / GIB, "GiB"
    raise ValueError(case["metric"])


def compare(cases: list[dict] | None = None) -> list[dict]:
    """One row per case: id, kind, stack, metric, measured, estimate, unit, error (%), source."""
    cases = cases if cases is not None else yaml.safe_load((HERE / "memory_cases.yaml").read_text())
    rows = []
    for case in cases:
        estimate, unit = serve_estimate(case) if case["kind"] == "serve" else finetune_estimate(case)
        measured = float(case["value"]) if unit in ("tokens", "blocks") else measured_gib(case)
        rows.append({"id": case["id"], "kind": case["kind"], "stack": case.get("stack"), "metric": case["metric"],
                     "measured": measured, "estimate": estimate, "unit": unit,
                     "error": (estimate - measured) / measured * 100, "source": case["source"].split(" (")[0]})
    return rows


def goal(rows: list[dict]) -> dict:
    """The fine-tuning goal on the HF/PEFT/TRL cases: never under by more than 5 %, median |error| <= 10 %."""
    errors = [r["error"] for r in rows if r["kind"] == "finetune" and r["stack"] == "hf"]
    median = statistics.median(abs(e) for e in errors)
    return {"cases": len(errors), "worst_under": min(errors), "median_abs": median,
            "met": min(errors) >= -5 and median <= 10}


def main() -> int:
    rows = compare()
    print("| case | stack | metric | measured | kit | error | source |")
    print("|---|---|---|---:|---:|---:|---|")
    for r in rows:
        if r["unit"] in ("tokens", "blocks"):
            shown = f"{r['measured']:,.0f} | {r['estimate']:,.0f}"
        else:
            shown = f"{r['measured']:.2f} GiB | {r['estimate']:.2f} GiB"
        print(f"| {r['id']} | {r['stack'] or '-'} | {r['metric']} | {shown} | {r['error']:+.1f}% | {r['source']} |")
    print()
    for kind in ("serve", "finetune"):
        errs = [abs(r["error"]) for r in rows if r["kind"] == kind]
        print(f"- {kind}: {len(errs)} cases, median |error| {statistics.median(errs):.1f}%, max {max(errs):.1f}%")
    g = goal(rows)
    print(f"- finetune, HF/PEFT/TRL stack: {g['cases']} cases, median |error| {g['median_abs']:.1f}%, "
          f"worst under-estimate {g['worst_under']:+.1f}% (goal: no case under by more than 5%, median at most "
          f"10%: {'met' if g['met'] else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
