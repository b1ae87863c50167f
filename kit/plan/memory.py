"""Per-GPU memory terms for serving and fine-tuning (research notes, memory.md §4).

Pure arithmetic over a model Layout and the constants in ``memory.yaml`` beside this module;
the planner (``kit.plan.search``) decides which allocations to try.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kit.errors import KitError
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


def trainer_settings(overrides: dict | None = None) -> dict:
    """How kit's trainer runs (memory.yaml ``finetune.trainer``), with a config's overrides checked:
    what the planner cannot model is refused with the reason."""
    c = constants()["finetune"]
    settings = dict(c["trainer"])
    for key, value in (overrides or {}).items():
        if key not in settings:
            raise KitError(f"fine-tune setting {key}: unknown to the memory plan (allowed: {', '.join(settings)})")
        settings[key] = value
    if settings["attention"] not in c["attention"]:
        raise KitError(f"attention {settings['attention']}: kit's trainer uses {' or '.join(c['attention'])} "
                       f"(eager attention keeps batch x heads x seq_len^2 scores per layer and is not planned)")
    if settings["loss"] not in c["loss"]:
        raise KitError(f"loss {settings['loss']}: allowed values are {', '.join(c['loss'])}")
    if settings["cpu_offload"]:
        raise KitError("cpu_offload: not planned: kit's trainer keeps weights, gradients and optimizer states on the "
                       "GPU (offloading them to host memory is slow and its footprint unmeasured); use --method "
                       "qlora, an 8-bit --optimizer or more GPUs")
    return settings


def finetune_breakdown(layout: Layout, *, n: int, method: str, seq_len: int, batch_size: int, grad_ckpt: bool,
                       trainable: int, optimizer: str, gpu_gib: float, lora_r: int = 0,
                       lora_targets: list[str] | None = None, trainer: dict | None = None,
                       load_bytes: float | None = None, outputs_kept: bool = False) -> Breakdown:
    """Peak per GPU of kit's trainer (memory.yaml ``finetune`` explains each constant).

    peak = weights + gradients + optimizer states + the largest of three moments:
      the loss (saved activations + the loss's vocab-wide tensors),
      one layer's backward (gradients + saved activations + that layer's activations and
        gradients + bitsandbytes' dequantized weight),
      the optimizer step (gradients + the step's temporaries),
    + CUDA context, NCCL buffers and allocator fragmentation. Terms: ``activations`` is the
    layer-backward moment's activations, ``logits`` what the loss needs beyond it.

    n > 1 is FSDP full sharding: weights, gradients and optimizer states divide by n, and each GPU
    also holds the root unit and two decoder layers unsharded. ``load_bytes`` (weights loaded in
    another dtype than bf16) and ``outputs_kept`` (a training loop that holds the model outputs,
    and so the bf16 logits, through backward) describe measured runs of other scripts."""
    c = constants()["finetune"]
    s = trainer_settings(trainer)
    h, inter = layout.hidden_size, active_intermediate(layout)
    kv = layout.num_kv_heads * layout.head_dim
    tokens = batch_size * seq_len
    opt = c["optimizers"][optimizer]
    base_quantization = c["methods"][method]["base_quantization"]
    quantized = base_quantization not in (None, "none")
    upcast = quantized and s["kbit_upcast"] and n == 1  # FSDP needs one storage dtype: no upcast
    rest = layout.params - layout.linear_params  # embeddings, lm_head, norms: never quantized
    q = quant_facts(base_quantization) if quantized else None
    linear_bytes = (q["bytes"] + q.get("overhead", 0.0)) if quantized else 2
    if base_quantization is None:  # the base model itself is trained
        weights = layout.params * (load_bytes or c["full_bytes"]["weights"])
        grads = layout.params * c["full_bytes"]["gradients"]
        state_bytes = c["full_bytes"]["weights"]
    else:  # a frozen base (16-bit, or quantized) plus the adapters
        base = (layout.linear_params * linear_bytes + rest * (4 if upcast else 2) if quantized
                else layout.params * (load_bytes or 2))
        weights = base + trainable * c["adapter_bytes"]["weights"]
        grads = trainable * c["adapter_bytes"]["gradients"]
        state_bytes = c["adapter_bytes"]["weights"]
    opt_bytes = opt.get("bytes", opt.get("states", 0) * state_bytes)
    step_tmp = trainable * state_bytes * opt.get("step_copies", 0) / n

    # FSDP: the root unit and `unsharded_layers` layers gathered in bf16 (4-bit packed for QLoRA)
    unsharded = unsharded_grads = comm = 0.0
    layer_linear = sum(lin.params for lin in layout.layer_linears)
    if n > 1:
        root = (layout.embedding_params + layout.lm_head_params + layout.global_other) * 2
        layer = layer_linear * linear_bytes + layout.layer_other * 2
        unsharded = root + c["fsdp"]["unsharded_layers"] * layer
        if base_quantization is None:
            unsharded_grads = (layer_linear + layout.layer_other) * c["full_bytes"]["gradients"]
        comm = c["fsdp"]["comm_buffers_gib"] * GIB

    # activations per token and layer; fp32 residual stream when QLoRA upcasts (kbit_upcast)
    a, bw = c["activations"], c["layer_backward"]
    scale = 2 if upcast else 1
    hidden = a["per_hidden"] + (a["trained_norms"] if base_quantization is None else 0)
    per_layer = scale * (hidden * h + a["per_kv"] * kv + a["per_intermediate"] * inter)
    if lora_r:
        chosen = [lin for lin in layout.layer_linears if lora_targets is None or lin.name in lora_targets]
        per_input = c["lora_input_bytes"] + (c["lora_dropout_mask_bytes"] if s["lora_dropout"] else 0)
        per_layer += sum((per_input * lin.d_in + 4 * lora_r)
                         * max(1, min(lin.experts, layout.experts_per_token or 1)) for lin in chosen)
    backward = scale * (bw["per_hidden"] * h + bw["per_intermediate"] * inter)
    if grad_ckpt:  # each layer's input is kept; one layer is recomputed during backward
        saved = layout.num_layers * tokens * h * 2 * scale
        layer_peak = tokens * (per_layer + backward)
    else:
        saved = layout.num_layers * tokens * per_layer
        layer_peak = tokens * backward
    saved += c["attention"][s["attention"]]["mask_bytes"] * batch_size * seq_len ** 2
    largest = max(lin.d_in * lin.d_out for lin in layout.layer_linears)
    dequant = c["dequant_buffers"] * largest * 2 if quantized else 0.0

    loss = c["loss"][s["loss"]]
    if "bytes_per_vocab" in loss:
        loss_peak = tokens * layout.vocab_size * (loss["bytes_per_vocab"] + (2 if outputs_kept else 0))
    else:
        loss_peak = min(tokens, loss["tile_tokens"]) * loss["tile_vocab"] * 2 + tokens * h * loss["hidden_grad_bytes"]

    g = grads / n + unsharded_grads
    at_loss = saved + loss_peak
    at_layer = g + saved + layer_peak + dequant
    at_step = g + step_tmp
    terms = {
        "weights": weights / n + unsharded,
        "gradients": g,
        "optimizer": trainable * opt_bytes / n + max(0.0, at_step - at_layer),
        "activations": saved + layer_peak + dequant,
        "logits": max(0.0, at_loss - at_layer),
    }
    subtotal = sum(terms.values())
    fragmentation = c["fragmentation_sharded"] if n > 1 else c["fragmentation"]
    terms["overhead"] = c["context_gib"] * GIB + fragmentation * subtotal + comm
    usable = c["usable_fraction"] * gpu_gib * GIB
    extra = {"trainable_params": trainable, "attention": s["attention"], "loss": s["loss"],
             "fsdp_unsharded_gib": round((unsharded + unsharded_grads) / GIB, 2),
             "loss_peak_gib": round(loss_peak / GIB, 2), "dequant_buffer_gib": round(dequant / GIB, 2)}
    return Breakdown(terms, usable, extra)


def finetune_host_bytes(layout: Layout, method: str, processes: int) -> float:
    """Host memory of a fine-tuning job on its node: the 16-bit base model, read whole by one
    process, and each process's own (memory.yaml ``finetune.host``); QLoRA only the latter."""
    c = constants()["finetune"]
    host = c["host"]
    streamed = c["methods"][method]["base_quantization"] not in (None, "none")
    base = 0.0 if streamed else layout.params * host["load_bytes"] * (1 + host["load_margin"])
    return base + processes * host["per_process_gib"] * GIB


def qlora_load_bytes(layout: Layout, trainable: int) -> float:
    """Each GPU's peak while sharded QLoRA loads: the whole 4-bit model, quantized onto every
    rank's GPU before FSDP shards it (memory.yaml ``finetune.host``)."""
    c = constants()["finetune"]
    q = quant_facts(c["methods"]["qlora"]["base_quantization"])
    rest = layout.params - layout.linear_params
    largest = max(lin.d_in * lin.d_out for lin in layout.layer_linears)
    return (layout.linear_params * (q["bytes"] + q["overhead"]) + rest * 2 + trainable * c["adapter_bytes"]["weights"]
            + largest * 2 + c["context_gib"] * GIB)
