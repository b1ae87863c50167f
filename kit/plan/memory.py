"""Per-GPU memory terms for serving and fine-tuning (research notes, memory.md §4).

Pure arithmetic over a model Layout and the constants in ``memory.yaml`` beside this module;
the planner (``kit.plan.search``) decides which allocations to try.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kit.models.arch import Layout
from kit.resources import packaged_yaml

GIB = 1024**3
MEMORY_FILE = Path(__file__).resolve().parent / "memory.yaml"


def constants() -> dict:
    return packaged_yaml(MEMORY_FILE)


@dataclass
class Breakdown:
    """Bytes per GPU by term, against what the GPU (or the engine) allows."""

    terms: dict[str, float]  # name -> bytes
    usable: float  # bytes the terms must fit in
    extra: dict  # derived figures (kv tokens etc.)

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    @property
    def headroom(self) -> float:
        return self.usable - self.total

    def gib(self) -> dict[str, float]:
        out = {f"{name}_gib": round(value / GIB, 2) for name, value in self.terms.items()}
        out["total_gib"] = round(self.total / GIB, 2)
        out["usable_gib"] = round(self.usable / GIB, 2)
        out["headroom_gib"] = round(self.headroom / GIB, 2)
        out.update(self.extra)
        return out


def quant_facts(quantize: str, checkpoint: dict | None = None) -> dict:
    """Bytes per quantized parameter; a pre-quantized checkpoint's own bits and group size win
    (the config keys memory.yaml names for that quantization)."""
    q = dict(constants()["quantizations"][quantize])
    if checkpoint and "checkpoint_bits" in q:
        bits = int(next((checkpoint[k] for k in q["checkpoint_bits"] if checkpoint.get(k)), 4))
        group = int(next((checkpoint[k] for k in q["checkpoint_group"] if checkpoint.get(k)), 128))
        q["bytes"] = bits / 8
        q["overhead"] = 0.0 if group <= 0 else (2 + bits / 8) / group  # fp16 scale + packed zero per group
    return q


def weight_bytes(layout: Layout, n: int, dtype_bytes: float, quantize: str | dict) -> float:
    """Weights on one of n tensor-parallel shards.

    Linear layers split n ways and shrink with quantization; embeddings and lm_head split by
    vocabulary and stay 16-bit; norms and routers are replicated (memory.md §1.4, §4.1).
    ``quantize`` is a name from memory.yaml or the facts from quant_facts().
    """
    q = quant_facts(quantize) if isinstance(quantize, str) else quantize
    if q["bytes"] is None:
        per_param = dtype_bytes
    elif "overhead_per_row" in q:
        per_param = q["bytes"] + q["overhead_per_row"] / layout.hidden_size
    else:
        per_param = q["bytes"] + q["overhead"]
    linear = layout.linear_params * per_param / n
    vocab = (layout.embedding_params + layout.lm_head_params) * dtype_bytes / n
    replicated = (layout.num_layers * layout.layer_other + layout.global_other) * dtype_bytes
    return linear + vocab + replicated


def kv_bytes_per_token(layout: Layout, n: int) -> int:
    """KV cache per token on one shard: 2 (K, V) x layers x KV heads per shard x head_dim x bytes.

    Engines give each shard k // n KV heads, and replicate when k < n (MQA: k == 1)."""
    heads = max(1, layout.num_kv_heads // n)
    return 2 * layout.num_layers * heads * layout.head_dim * constants()["serve"]["kv_bytes"]


def active_intermediate(layout: Layout) -> int:
    return layout.intermediate_size * max(1, layout.experts_per_token)


def serve_breakdown(layout: Layout, *, n: int, dtype_bytes: float, quantize: str | dict, kv_tokens: int,
                    prefill_tokens: int, gpu_gib: float, engine: dict) -> Breakdown:
    mem = engine["memory"]
    coeff = constants()["serve"]["prefill_act"]
    h, k_d = layout.hidden_size, layout.num_kv_heads * layout.head_dim
    act = prefill_tokens * 2 * (coeff["per_hidden"] * h + coeff["per_intermediate"] * active_intermediate(layout) / n
                                + (h + 2 * k_d) / n)
    kv_token = kv_bytes_per_token(layout, n)
    terms = {
        "weights": weight_bytes(layout, n, dtype_bytes, quantize),
        "kv_cache": kv_tokens * kv_token,
        "activations": act,
        "overhead": mem["overhead_gib"]["single" if n == 1 else "multi"] * GIB,
    }
    usable = mem["fraction"] * mem["wiggle_room"] * gpu_gib * GIB
    fixed = terms["weights"] + terms["activations"] + terms["overhead"]
    capacity = max(0, int((usable - fixed) // kv_token))
    return Breakdown(terms, usable, {"kv_bytes_per_token": kv_token, "kv_capacity_tokens": capacity})


def lora_trainable(layout: Layout, r: int, targets: list[str] | None) -> int:
    """Adapter parameters: r x (d_in + d_out) per targeted linear layer (per expert for MoE)."""
    chosen = [lin for lin in layout.layer_linears if targets is None or lin.name in targets]
    return layout.num_layers * sum(r * (lin.d_in + lin.d_out) * max(1, lin.experts) for lin in chosen)


def finetune_breakdown(layout: Layout, *, n: int, method: str, seq_len: int, batch_size: int, grad_ckpt: bool,
                       trainable: int, optimizer: str, gpu_gib: float) -> Breakdown:
    """Peak per GPU: weights + gradients + optimizer + activations + logits + context + fragmentation.

    With n > 1 kit plans FSDP full sharding: weights, gradients and optimizer states divide by n;
    activations and logits are per micro-batch on every GPU (memory.md §4.2)."""
    c = constants()["finetune"]
    params = layout.params
    opt = c["optimizers"][optimizer]
    base_quantization = c["methods"][method]["base_quantization"]
    if base_quantization is None:  # the base model itself is trained
        weights = params * c["full_bytes"]["weights"]
        grads = params * c["full_bytes"]["gradients"]
        opt_bytes = opt.get("bytes", opt.get("states", 0) * c["full_bytes"]["weights"])
    else:  # a frozen base (16-bit, or quantized as memory.yaml says) plus the adapters
        opt_bytes = opt.get("bytes", opt.get("states", 0) * c["adapter_bytes"]["weights"])
        base = weight_bytes(layout, 1, constants()["dtype_bytes"]["bfloat16"], base_quantization)
        weights = base + trainable * c["adapter_bytes"]["weights"]
        grads = trainable * c["adapter_bytes"]["gradients"]
    tokens = batch_size * seq_len
    act_coeff = c["activations"]
    per_layer = tokens * 2 * (act_coeff["alpha"] * layout.hidden_size + act_coeff["beta"] * active_intermediate(layout))
    if grad_ckpt:
        activations = layout.num_layers * tokens * layout.hidden_size * 2 + per_layer
    else:
        activations = layout.num_layers * per_layer
    terms = {
        "weights": weights / n,
        "gradients": grads / n,
        "optimizer": trainable * opt_bytes / n,
        "activations": activations,
        "logits": tokens * layout.vocab_size * c["logits_bytes_per_vocab"],
    }
    subtotal = sum(terms.values())
    terms["overhead"] = c["context_gib"] * GIB + c["fragmentation"] * subtotal + (c["multi_gpu_buffers_gib"] * GIB if n > 1 else 0)
    usable = c["usable_fraction"] * gpu_gib * GIB
    return Breakdown(terms, usable, {"trainable_params": trainable})
