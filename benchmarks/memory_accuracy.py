"""Compare kit's memory model with public measurements (benchmarks/memory_cases.yaml).

Each case cites its source (a vLLM/TGI start-up log, a fine-tuning memory table) and quotes
the figure. For each, kit computes the same quantity from the model's config and the stated
settings, and this prints a Markdown table with the error per case. Run:

    .venv/bin/python benchmarks/memory_accuracy.py > /tmp/accuracy.md
"""

from __future__ import annotations

import copy
import statistics
import sys
from pathlib import Path

import yaml

from kit.plan.memory import GIB, finetune_breakdown, lora_trainable, serve_breakdown, weight_bytes
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
                     "output_proj": "o_proj", "mlp": ["gate_proj", "up_proj", "down_proj"]}


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


def finetune_estimate(case: dict) -> tuple[float, str]:
    lay = layout_of(case["model"])
    s = case["settings"]
    method = s["method"]
    targets = None
    if s.get("lora_targets"):
        targets = []
        for t in s["lora_targets"]:
            mapped = TORCHTUNE_TARGETS[t]
            targets += mapped if isinstance(mapped, list) else [mapped]
    trainable = lay.params if method == "full" else lora_trainable(lay, s.get("lora_r") or 8, targets)
    grad_ckpt = bool(s.get("grad_ckpt")) if s.get("grad_ckpt") is not None else True
    b = finetune_breakdown(lay, n=1, method=method, seq_len=s["seq_len"],
                           batch_size=s.get("batch_size") or s.get("micro_batch_size") or 1, grad_ckpt=grad_ckpt,
                           trainable=trainable, optimizer="adamw", gpu_gib=GPU_GIB[case["gpu"]])
    allocated = sum(v for k, v in b.terms.items() if k != "overhead")
    if case["metric"] == "peak_allocated":
        return allocated / GIB, "GiB"
    if case["metric"] == "peak_reserved":
        from kit.plan.memory import constants

        return allocated * (1 + constants()["finetune"]["fragmentation"]) / GIB, "GiB"
    raise ValueError(case["metric"])


def main() -> int:
    cases = yaml.safe_load((HERE / "memory_cases.yaml").read_text())
    print("| case | metric | measured | kit | error | source |")
    print("|---|---|---:|---:|---:|---|")
    errors = {"serve": [], "finetune": []}
    for case in cases:
        estimate, unit = serve_estimate(case) if case["kind"] == "serve" else finetune_estimate(case)
        if unit in ("tokens", "blocks"):
            measured = float(case["value"])
            shown = f"{measured:,.0f} | {estimate:,.0f}"
        else:
            measured = measured_gib(case)
            shown = f"{measured:.2f} GiB | {estimate:.2f} GiB"
        err = (estimate - measured) / measured * 100
        errors[case["kind"]].append(abs(err))
        print(f"| {case['id']} | {case['metric']} | {shown} | {err:+.1f}% | {case['source'].split(' (')[0]} |")
    print()
    for kind, errs in errors.items():
        print(f"- {kind}: {len(errs)} cases, median |error| {statistics.median(errs):.1f}%, max {max(errs):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
