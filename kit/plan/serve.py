"""Serve plans: the cheapest single-node allocation where TGI or vLLM holds the model, its KV
cache and prefill workspace within the engine's own memory budget, and the engine flags that
make the engine use memory and admit requests as planned. Engine facts come from engines.yaml,
site facts from the site file; nothing engine- or site-specific lives here.

The KV cache must hold what the engine needs to start (one request of max-total-tokens and the
prefill warm-up batch) and then either ``--concurrency`` full-length requests, or, by default,
memory.yaml's number of typical requests. The plan reports how many of each fit at once, and
the engine gets the request limit the plan checked.
"""

from __future__ import annotations

from kit import engines
from kit.errors import KitError
from kit.models.resolve import SERVE_DTYPES, ModelInfo
from kit.plan.memory import GIB, Breakdown, constants, quant_facts, serve_breakdown
from kit.plan.quantize import checkpoint_quantization, resolve_quantize
from kit.plan.search import Option, Walk, base_result, check_gpu_count, fill_choice, gib, tp_problem, walk


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


def plan_serve(model: ModelInfo, site, *, engine: str = "tgi", dtype: str = "auto", quantize: str | None = None,
               max_input_tokens: int | None = None, max_total_tokens: int | None = None,
               concurrency: int | None = None, partition: str | None = None, gpu: str | None = None,
               gpus: int | None = None, _suggest: bool = True) -> dict:
    eng = engines.engine(engine)
    layout = model.require_layout()
    quantize = resolve_quantize(model, quantize, engine, eng)
    dtype = serve_dtype(model, dtype, eng)
    max_input, max_total = context_lengths(model, max_input_tokens, max_total_tokens)
    if concurrency is not None and concurrency < 1:
        raise KitError(f"--concurrency {concurrency}: must be at least 1")
    divide = eng["tensor_parallel"]["must_divide"]
    check_gpu_count(gpus, site, layout, divide)
    c = constants()["serve"]
    typical_tokens = min(c["typical_request"]["input_tokens"] + c["typical_request"]["output_tokens"], max_total)
    typical_target = None if concurrency is not None else c["default_typical_requests"]
    dtype_bytes = constants()["dtype_bytes"][dtype]
    margin = c["margin_gib"] * GIB
    headroom = c["kv_headroom"]
    q_facts = quant_facts(quantize, model.quantization)

    def prefill_tokens(option: Option) -> int:
        p = eng["prefill"]
        tokens = p["tokens"]
        if "tokens_large_gpu" in p and option.tier.compute_capability >= p["large_gpu_min_cc"]:
            tokens = p["tokens_large_gpu"]
        return max(max_input, min(tokens, max_total)) if p["at_least_max_input"] else tokens

    def kv_tokens(option: Option) -> tuple[int, str]:
        """Tokens the KV cache must hold on this option, and what they are for."""
        start = max(max_total, prefill_tokens(option))  # one full-length request and the warm-up batch
        if concurrency is not None:
            return max(start, concurrency * max_total), f"{max_total:,} x {concurrency} full-length"
        typical = typical_target * typical_tokens
        if typical > start:
            return typical, f"{typical_target} typical requests of {typical_tokens:,}"
        return start, f"one {max_total:,}-token request" + (" and the warm-up batch" if start > max_total else "")

    def kv_room(b: Breakdown) -> int:
        """Tokens the KV cache may hold on this breakdown, keeping the headroom and the margin."""
        fixed = b.terms["weights"] + b.terms["activations"] + b.terms["overhead"]
        return max(0, int((b.usable - fixed - margin) / (1 + headroom) // b.extra["kv_bytes_per_token"]))

    def engine_limit(option: Option, room: int) -> int:
        """The request limit the engine gets: --concurrency, or the typical requests the KV room
        holds, at most the engine's own default (what the memory model was calibrated with)."""
        if concurrency is not None:
            return concurrency
        cap = eng["concurrency"]
        default = cap["default"]
        if "default_large_gpu" in cap and option.tier.compute_capability >= eng["prefill"]["large_gpu_min_cc"]:
            default = cap["default_large_gpu"]
        limit = min(default, room // typical_tokens)
        return max(1, min(limit, prefill_tokens(option)) if cap["at_most_prefill"] else limit)

    def evaluate(option: Option) -> tuple[Breakdown, str | None]:
        need, what = kv_tokens(option)
        b = serve_breakdown(layout, n=option.gpus, dtype_bytes=dtype_bytes, quantize=q_facts, kv_tokens=need,
                            prefill_tokens=prefill_tokens(option), gpu_gib=option.tier.usable_gib, engine=eng)
        if option.tier.compute_capability < q_facts["min_cc"]:
            return b, f"{quantize} needs compute capability {q_facts['min_cc']}, {option.tier.model} has {option.tier.compute_capability}"
        fixed = b.terms["weights"] + b.terms["activations"] + b.terms["overhead"]
        if fixed > b.usable:
            return b, (f"weights {gib(b.terms['weights'])} + activations and overhead need {gib(fixed)} per GPU; "
                       f"{eng['label']} budget is {gib(b.usable)}")
        if b.total + headroom * b.terms["kv_cache"] + margin > b.usable:
            return b, (f"KV cache for {need:,} tokens ({what}) needs {gib(b.terms['kv_cache'])} "
                       f"(+{headroom:.0%}), room for {b.extra['kv_capacity_tokens']:,} tokens ({gib(b.usable - fixed)}) "
                       f"with a {gib(margin)} margin")
        if concurrency is not None and eng["concurrency"]["at_most_prefill"] and concurrency > prefill_tokens(option):
            return b, (f"{eng['label']} runs at most {prefill_tokens(option):,} requests at once here (its batch of "
                       f"{prefill_tokens(option):,} prefill tokens); --concurrency {concurrency} is more")
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
    found = walk(site, partition, gpu, sizes, evaluate, max_nodes=eng["serve"]["max_nodes"],
                 nodes_why="kit's serving job starts one engine on one node")
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
        typical_request_tokens=typical_tokens,
        typical_requests_target=typical_target,
        kv_tokens_required=None,
        fits_at_once=None,
        max_concurrent_requests=None,
    )
    if w.chosen is not None:
        room = kv_room(w.breakdown)
        limit = engine_limit(w.chosen, room)
        result.update(
            kv_tokens_required=kv_tokens(w.chosen)[0],
            fits_at_once={"full_length": room // max_total, "typical": room // typical_tokens},
            max_concurrent_requests=limit,
        )
        values = {
            "gpus": w.chosen.gpus,
            "quantize_value": eng["quantize"].get(quantize),
            "dtype_value": dtype if (quantize == "none" or eng["dtype_with_quantize"]) else None,
            "max_input_tokens": max_input,
            "max_total_tokens": max_total,
            "max_batch_prefill_tokens": prefill,
            "memory_fraction": memory_fraction,
            "max_concurrent": limit,
        }
        result["engine_args"] = engines.engine_args(eng, values)
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


