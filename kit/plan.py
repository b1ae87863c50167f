"""The planner: the cheapest allocation on a site that fits a model, with a reason for each
option it turned down, and the engine flags that make the engine use memory as planned.

Allocations are tried in order of cost (GPUs x the tier's relative cost, then the tier's
order in the site file, then fewer GPUs). Engine facts come from ``kit/data/engines.yaml``,
site facts from the site file; nothing engine- or site-specific lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from kit.budget import GIB, Breakdown, constants, finetune_breakdown, lora_trainable, quant_facts, serve_breakdown
from kit.errors import KitError
from kit.models.arch import Layout
from kit.models.resolve import SERVE_DTYPES, ModelInfo
from kit.resources import data_file

QUANTIZE_CHOICES = ("none", "bitsandbytes", "bitsandbytes-nf4", "fp8", "awq", "gptq")
ENGINES = ("tgi", "vllm")
METHODS = ("full", "lora", "qlora")


@lru_cache(maxsize=1)
def engines() -> dict:
    import yaml

    return yaml.load(data_file("engines.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@dataclass
class Option:
    partition: str
    tier_name: str
    tier: object  # kit.site_schema.GpuTier
    gpus: int

    @property
    def label(self) -> str:
        return f"{self.gpus}x {self.tier_name} ({self.partition})"

    @property
    def cost(self) -> float:
        return self.gpus * self.tier.cost


@dataclass
class Walk:
    chosen: Option | None = None
    breakdown: Breakdown | None = None
    rejected: list[dict] = field(default_factory=list)

    def reject(self, option: str, reason: str) -> None:
        self.rejected.append({"option": option, "reason": reason})


def gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def pick_tiers(site, partition: str | None, gpu: str | None) -> tuple[str, dict]:
    name = partition or site.defaults.gpu_partition
    part = site.partitions.get(name)
    if part is None:
        raise KitError(f"--partition {name}: not a partition of {site.name} (partitions: {', '.join(site.partitions)})")
    if not part.gpu_tiers:
        gpu_parts = ", ".join(site.gpu_partitions()) or "none"
        raise KitError(f"--partition {name}: has no GPUs on {site.name} (GPU partitions: {gpu_parts})")
    tiers = part.gpu_tiers
    if gpu is not None:
        if gpu not in tiers:
            raise KitError(f"--gpu {gpu}: not a GPU tier of {site.name}/{name} (tiers: {', '.join(tiers)})")
        tiers = {gpu: tiers[gpu]}
    return name, tiers


def walk(site, partition: str | None, gpu: str | None, sizes: list[int],
         evaluate: Callable[[Option], tuple[Breakdown, str | None]]) -> Walk:
    """Try options from the cheapest; the first that ``evaluate`` accepts (reason None) wins."""
    part_name, tiers = pick_tiers(site, partition, gpu)
    order = {name: i for i, name in enumerate(tiers)}
    options = sorted(
        (Option(part_name, name, tier, n) for name, tier in tiers.items() for n in sizes),
        key=lambda o: (o.cost, order[o.tier_name], o.gpus),
    )
    result = Walk()
    node_limit = site.limits.max_nodes_per_job
    for option in options:
        per_node = option.tier.gpus_per_node
        if option.gpus > per_node * node_limit:
            result.reject(option.label, f"{option.tier_name} nodes have {per_node} GPU{'s' if per_node > 1 else ''} and jobs may use "
                                        f"{node_limit} node{'s' if node_limit > 1 else ''} (limits.max_nodes_per_job)")
            continue
        cap = site.limits.gpus_per_user
        if cap is not None and option.gpus > cap:
            result.reject(option.label, f"over the per-user cap of {cap} GPUs on {site.name}")
            continue
        breakdown, reason = evaluate(option)
        if reason is None:
            result.chosen, result.breakdown = option, breakdown
            return result
        result.reject(option.label, reason)
    return result


def check_gpu_count(gpus: int | None, site, layout: Layout | None, divide: list[str]) -> None:
    """Explicit --gpus: one clear error for a count no tier can take."""
    if gpus is None:
        return
    if gpus < 1:
        raise KitError(f"--gpus {gpus}: must be at least 1")
    cap = site.limits.gpus_per_user
    if cap is not None and gpus > cap:
        raise KitError(f"--gpus {gpus}: over the per-user cap of {cap} GPUs on {site.name} (limits.gpus_per_user)")
    if layout is not None:
        bad = tp_problem(layout, gpus, divide)
        if bad:
            raise KitError(f"--gpus {gpus}: {bad}")


def tp_problem(layout: Layout, n: int, divide: list[str]) -> str | None:
    for key in divide:
        count = getattr(layout, key)
        if key == "num_kv_heads" and count == 1:
            continue  # multi-query attention: the one KV head is replicated on every shard
        if count % n:
            label = key.replace("num_", "").replace("_", " ").replace("kv", "KV")
            return f"tensor-parallel size {n} does not divide the model's {count} {label}"
    return None


def engine_args(engine: dict, values: dict) -> list[str]:
    args: list[str] = []
    for flag, key in engine["args"]:
        value = values.get(key)
        if value is not None:
            args += [flag, str(value)]
    return args


def resolve_quantize(model: ModelInfo, quantize: str | None, engine_name: str, engine: dict) -> str:
    """The quantization to plan: the user's, or the checkpoint's own (``quantization_config``)."""
    own = checkpoint_quantization(model)
    if own and quantize not in (None, own):
        raise KitError(f"--quantize {quantize}: {model.name} is a {own} checkpoint; leave --quantize out or give {own}")
    if quantize is None:
        quantize = own or "none"
    if quantize not in QUANTIZE_CHOICES:
        raise KitError(f"--quantize {quantize}: allowed values are {', '.join(QUANTIZE_CHOICES)}")
    if quantize != "none" and quantize not in engine["quantize"]:
        allowed = ", ".join(["none", *engine["quantize"]])
        raise KitError(f"--quantize {quantize}: not available with --engine {engine_name} "
                       f"{engine['version']} (allowed: {allowed})")
    q = constants()["quantizations"][quantize]
    if not q["on_the_fly"] and own != quantize:
        raise KitError(f"--quantize {quantize}: needs a pre-quantized {quantize.upper()} checkpoint, and "
                       f"{model.name} is not one; use a {quantize.upper()} repo or --quantize bitsandbytes-nf4")
    return quantize


def checkpoint_quantization(model: ModelInfo) -> str | None:
    q = model.quantization
    if not q:
        return None
    method = str(q.get("quant_method", "")).lower()
    if method == "bitsandbytes":
        return "bitsandbytes-nf4" if q.get("load_in_4bit") else "bitsandbytes"
    if method in ("awq", "gptq", "fp8"):
        return method
    raise KitError(f"{model.name}: checkpoint quantization {method!r} is not planned by kit "
                   f"(known: awq, gptq, fp8, bitsandbytes)")


def serve_dtype(model: ModelInfo, dtype: str, engine: dict) -> str:
    if dtype == "auto":
        return model.dtype if model.dtype in SERVE_DTYPES else "bfloat16"
    if dtype not in engine["dtypes"]:
        raise KitError(f"--dtype {dtype}: allowed values are auto, {', '.join(engine['dtypes'])}")
    return dtype


def context_lengths(model: ModelInfo, max_input: int | None, max_total: int | None) -> tuple[int, int]:
    limit = model.max_context
    default_total = constants()["serve"]["default_max_total_tokens"]
    if max_total is not None and max_total < 2:
        raise KitError(f"--max-total-tokens {max_total}: must be at least 2")
    if max_total is None:
        max_total = min(limit or default_total, default_total)
        if max_input is not None and max_input >= max_total:
            max_total = min(limit or max_input + 1024, max_input + 1024)
    if limit is not None and max_total > limit:
        raise KitError(f"--max-total-tokens {max_total}: over {model.name}'s context of {limit} tokens")
    if max_input is None:
        max_input = max_total - min(1024, max_total // 2)
    if not 0 < max_input < max_total:
        raise KitError(f"--max-input-tokens {max_input}: must be at least 1 and below --max-total-tokens ({max_total})")
    return max_input, max_total


def base_result(model: ModelInfo, task: str, site) -> dict:
    return {
        "model": model.name,
        "params": model.params,
        "active_params": model.active_params,
        "params_from": model.params_from,
        "task": task,
        "fits": False,
        "site": site.name,
        "partition": None,
        "gpu_type": None,
        "gpu_model": None,
        "gpu_memory_gib": None,
        "gpus": None,
        "nodes": None,
        "constraint": None,
        "gres": None,
        "per_gpu": None,
        "engine_args": [],
        "rejected": [],
        "suggestion": None,
        "warnings": list(model.warnings),
    }


def fill_choice(result: dict, w: Walk) -> dict:
    result["rejected"] = w.rejected
    if w.chosen is None:
        return result
    o, tier = w.chosen, w.chosen.tier
    nodes = -(-o.gpus // tier.gpus_per_node)
    result.update(
        fits=True,
        partition=o.partition,
        gpu_type=o.tier_name,
        gpu_model=tier.model,
        gpu_memory_gib=tier.usable_gib,
        gpus=o.gpus,
        nodes=nodes,
        constraint=tier.constraint,
        gres=f"gpu:{tier.gres}:{o.gpus // nodes}",
        per_gpu=w.breakdown.gib(),
    )
    return result


def plan_serve(model: ModelInfo, site, *, engine: str = "tgi", dtype: str = "auto", quantize: str | None = None,
               max_input_tokens: int | None = None, max_total_tokens: int | None = None,
               concurrency: int | None = None, partition: str | None = None, gpu: str | None = None,
               gpus: int | None = None, _suggest: bool = True) -> dict:
    if engine not in ENGINES:
        raise KitError(f"--engine {engine}: allowed values are {', '.join(ENGINES)}")
    eng = engines()[engine]
    layout = model.require_layout()
    quantize = resolve_quantize(model, quantize, engine, eng)
    dtype = serve_dtype(model, dtype, eng)
    max_input, max_total = context_lengths(model, max_input_tokens, max_total_tokens)
    if concurrency is None:
        concurrency = constants()["serve"]["default_concurrency"]
    if concurrency < 1:
        raise KitError(f"--concurrency {concurrency}: must be at least 1")
    divide = eng["tensor_parallel"]["must_divide"]
    check_gpu_count(gpus, site, layout, divide)
    kv_tokens = max_total * concurrency
    dtype_bytes = constants()["dtype_bytes"][dtype]
    margin = constants()["serve"]["margin_gib"] * GIB
    headroom = constants()["serve"]["kv_headroom"]
    q_facts = quant_facts(quantize, model.quantization)

    def prefill_tokens(option: Option) -> int:
        p = eng["prefill"]
        tokens = p["tokens"]
        if "tokens_large_gpu" in p and option.tier.compute_capability >= p["large_gpu_min_cc"]:
            tokens = p["tokens_large_gpu"]
        return max(max_input, min(tokens, max_total)) if p["at_least_max_input"] else tokens

    def evaluate(option: Option) -> tuple[Breakdown, str | None]:
        b = serve_breakdown(layout, n=option.gpus, dtype_bytes=dtype_bytes, quantize=q_facts, kv_tokens=kv_tokens,
                            prefill_tokens=prefill_tokens(option), gpu_gib=option.tier.usable_gib, engine=eng)
        if option.tier.compute_capability < q_facts["min_cc"]:
            return b, f"{quantize} needs compute capability {q_facts['min_cc']}, {option.tier.model} has {option.tier.compute_capability}"
        fixed = b.terms["weights"] + b.terms["activations"] + b.terms["overhead"]
        if fixed > b.usable:
            return b, (f"weights {gib(b.terms['weights'])} + activations and overhead need {gib(fixed)} per GPU; "
                       f"{eng['label']} budget is {gib(b.usable)}")
        if b.total + headroom * b.terms["kv_cache"] + margin > b.usable:
            return b, (f"KV cache for {kv_tokens:,} tokens ({max_total:,} x {concurrency}) needs {gib(b.terms['kv_cache'])} "
                       f"(+{headroom:.0%}), room for {b.extra['kv_capacity_tokens']:,} tokens ({gib(b.usable - fixed)}) "
                       f"with a {gib(margin)} margin")
        return b, None

    sizes = [gpus] if gpus else [n for n in eng["tensor_parallel"]["sizes"]]
    result = base_result(model, "serve", site)
    w = Walk()
    if gpus is None:
        for n in list(sizes):
            problem = tp_problem(layout, n, divide)
            if problem:
                sizes.remove(n)
                w.reject(f"{n} GPUs (any tier)", problem)
    found = walk(site, partition, gpu, sizes, evaluate)
    w.chosen, w.breakdown, w.rejected = found.chosen, found.breakdown, w.rejected + found.rejected
    fill_choice(result, w)
    prefill = prefill_tokens(w.chosen) if w.chosen else None
    memory_fraction = eng["memory"]["fraction"]
    result.update(
        engine=engine,
        engine_version=eng["version"],
        dtype=dtype,
        quantize=quantize,
        max_input_tokens=max_input,
        max_total_tokens=max_total,
        concurrency=concurrency,
    )
    if w.chosen is not None:
        values = {
            "gpus": w.chosen.gpus,
            "quantize_value": eng["quantize"].get(quantize),
            "dtype_value": dtype if (quantize == "none" or eng["dtype_with_quantize"]) else None,
            "max_input_tokens": max_input,
            "max_total_tokens": max_total,
            "max_batch_prefill_tokens": prefill,
            "memory_fraction": memory_fraction,
        }
        result["engine_args"] = engine_args(eng, values)
    elif _suggest and not checkpoint_quantization(model):
        result["suggestion"] = suggest_quantization(model, site, quantize, eng, retry_options={
            "engine": engine, "dtype": dtype, "max_input_tokens": max_input, "max_total_tokens": max_total,
            "concurrency": concurrency, "partition": partition, "gpu": gpu, "gpus": gpus})
    notes = [] if layout.num_kv_heads > 1 or w.chosen is None or w.chosen.gpus == 1 else list(layout.notes)
    if model.max_context is None:
        notes.append(f"{model.name}: the config gives no context length; planned with {max_total:,} tokens")
    result["warnings"] += notes
    return result


def suggest_quantization(model, site, current: str, eng: dict, retry_options: dict) -> dict | None:
    """When nothing fits: the least aggressive on-the-fly quantization that would."""
    order = constants()["suggest_order"]
    start = order.index(current) + 1 if current in order else 0
    for q in order[start:]:
        if q not in eng["quantize"]:
            continue
        try:
            trial = plan_serve(model, site, quantize=q, _suggest=False, **retry_options)
        except KitError:
            continue
        if trial["fits"]:
            return {"quantize": q, "gpus": trial["gpus"], "gpu_type": trial["gpu_type"],
                    "text": f"--quantize {q} would fit on {trial['gpus']}x {trial['gpu_type']}"}
    return None


def parse_targets(layout: Layout, targets: str) -> list[str] | None:
    if targets in ("all-linear", "all"):
        return None
    names = [t.strip() for t in targets.split(",") if t.strip()]
    known = layout.linear_names()
    unknown = [t for t in names if t not in known]
    if unknown or not names:
        raise KitError(f"--lora-targets {targets}: {', '.join(unknown) or 'empty'} not a linear module of this "
                       f"model (allowed: all-linear or a comma list of {', '.join(known)})")
    return names


def plan_finetune(model: ModelInfo, site, *, method: str | None = None, seq_len: int | None = None,
                  batch_size: int | None = None, grad_ckpt: bool | None = None, lora_r: int | None = None,
                  lora_targets: str | None = None, optimizer: str | None = None, partition: str | None = None,
                  gpu: str | None = None, gpus: int | None = None) -> dict:
    d = constants()["finetune"]["defaults"]

    def default(value, key):
        return d[key] if value is None else value

    method, seq_len, batch_size = default(method, "method"), default(seq_len, "seq_len"), default(batch_size, "batch_size")
    grad_ckpt, lora_r = default(grad_ckpt, "grad_ckpt"), default(lora_r, "lora_r")
    lora_targets, optimizer = default(lora_targets, "lora_targets"), default(optimizer, "optimizer")
    if method not in METHODS:
        raise KitError(f"--method {method}: allowed values are {', '.join(METHODS)}")
    optimizers = constants()["finetune"]["optimizers"]
    if optimizer not in optimizers:
        raise KitError(f"--optimizer {optimizer}: allowed values are {', '.join(optimizers)}")
    for flag, value in (("--seq-len", seq_len), ("--batch-size", batch_size), ("--lora-r", lora_r)):
        if value < 1:
            raise KitError(f"{flag} {value}: must be at least 1")
    layout = model.require_layout()
    if model.max_context and seq_len > model.max_context:
        raise KitError(f"--seq-len {seq_len}: over {model.name}'s context of {model.max_context} tokens")
    check_gpu_count(gpus, site, None, [])
    targets = parse_targets(layout, lora_targets)
    trainable = model.params if method == "full" else lora_trainable(layout, lora_r, targets)

    def evaluate(option: Option) -> tuple[Breakdown, str | None]:
        b = finetune_breakdown(layout, n=option.gpus, method=method, seq_len=seq_len, batch_size=batch_size,
                               grad_ckpt=grad_ckpt, trainable=trainable, optimizer=optimizer,
                               gpu_gib=option.tier.usable_gib)
        if b.total > b.usable:
            top = max(b.terms, key=b.terms.get)
            return b, f"needs {gib(b.total)} per GPU, usable {gib(b.usable)}; largest term: {top} {gib(b.terms[top])}"
        return b, None

    sizes = [gpus] if gpus else [1, 2, 4, 8]
    w = walk(site, partition, gpu, sizes, evaluate)
    result = fill_choice(base_result(model, "finetune", site), w)
    result.update(method=method, seq_len=seq_len, batch_size=batch_size, grad_ckpt=grad_ckpt,
                  lora_r=None if method == "full" else lora_r,
                  lora_targets=None if method == "full" else lora_targets, optimizer=optimizer,
                  trainable_params=trainable, strategy=None)
    if w.chosen is not None:
        n = w.chosen.gpus
        result["strategy"] = "fsdp" if n > 1 else "single-gpu"
        args = ["--method", method, "--seq-len", str(seq_len), "--batch-size", str(batch_size),
                "--grad-ckpt" if grad_ckpt else "--no-grad-ckpt", "--optimizer", optimizer]
        if method != "full":
            args += ["--lora-r", str(lora_r), "--lora-targets", lora_targets]
        args += ["--nproc-per-node", str(n)] + (["--fsdp"] if n > 1 else [])
        result["engine_args"] = args
    else:
        result["suggestion"] = finetune_lever(method, grad_ckpt, optimizer)
    return result


def finetune_lever(method: str, grad_ckpt: bool, optimizer: str) -> dict | None:
    if not grad_ckpt:
        return {"text": "turn on --grad-ckpt (activations dominate without it)"}
    if method == "full":
        return {"text": "use --method lora or --method qlora"}
    if method == "lora":
        return {"text": "use --method qlora (4-bit base weights)"}
    if optimizer in ("adamw", "paged_adamw_32bit"):
        return {"text": "use --optimizer paged_adamw_8bit, a shorter --seq-len or a smaller --lora-r"}
    return {"text": "use a shorter --seq-len or a smaller model"}
