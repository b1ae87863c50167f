"""Fine-tune plans: full, LoRA or QLoRA on the cheapest allocation whose peak memory fits, and
the cheapest change that would make a config fit when none does."""

from __future__ import annotations

from kit.errors import KitError
from kit.models.arch import Layout
from kit.models.resolve import ModelInfo
from kit.plan.memory import (
    GIB,
    Breakdown,
    constants,
    finetune_breakdown,
    finetune_host_bytes,
    lora_trainable,
    qlora_load_bytes,
)
from kit.plan.search import Option, base_result, check_gpu_count, fill_choice, gib, walk


def methods() -> list[str]:
    """full, lora, qlora: memory.yaml's ``finetune.methods``."""
    return list(constants()["finetune"]["methods"])


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
                  gpu: str | None = None, gpus: int | None = None, trainer: dict | None = None,
                  suggest: bool = True) -> dict:
    """The cheapest allocation that fits; when none does, ``suggestion`` names the cheapest change
    that would (kit.plan.fixes; ``suggest=False`` leaves it out)."""
    d = constants()["finetune"]["defaults"]

    def default(value, key):
        return d[key] if value is None else value

    method, seq_len, batch_size = default(method, "method"), default(seq_len, "seq_len"), default(batch_size, "batch_size")
    grad_ckpt, lora_r = default(grad_ckpt, "grad_ckpt"), default(lora_r, "lora_r")
    lora_targets, optimizer = default(lora_targets, "lora_targets"), default(optimizer, "optimizer")
    if method not in methods():
        raise KitError(f"--method {method}: allowed values are {', '.join(methods())}")
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
    adapters = constants()["finetune"]["methods"][method]["adapters"]
    trainable = lora_trainable(layout, lora_r, targets) if adapters else model.params

    def evaluate(option: Option) -> tuple[Breakdown, str | None]:
        b = finetune_breakdown(layout, n=option.gpus, method=method, seq_len=seq_len, batch_size=batch_size,
                               grad_ckpt=grad_ckpt, trainable=trainable, optimizer=optimizer,
                               gpu_gib=option.tier.usable_gib, lora_r=lora_r if adapters else 0,
                               lora_targets=targets, trainer=trainer)
        if b.total > b.usable:
            top = max(b.terms, key=b.terms.get)
            return b, f"needs {gib(b.total)} per GPU, usable {gib(b.usable)}; largest term: {top} {gib(b.terms[top])}"
        return b, loading_problem(option, b.usable)

    def host_bytes(option: Option) -> float:
        return finetune_host_bytes(layout, method, min(option.gpus, option.tier.gpus_per_node))

    def loading_problem(option: Option, usable: float) -> str | None:
        """What fits in training but not while the model loads (memory.yaml ``finetune.host``)."""
        host, cap = host_bytes(option), option.tier.job_mem_gib
        if cap is not None and host > cap * GIB:
            return (f"host memory: the whole 16-bit model is read into it first: needs {gib(host)}, a job "
                    f"gets {cap} GiB on these nodes; use --method qlora (it streams the model onto the GPUs)")
        load = qlora_load_bytes(layout, trainable) if method == "qlora" and option.gpus > 1 else 0.0
        if load > usable:
            return (f"each GPU holds the whole 4-bit model before FSDP shards it: needs {gib(load)}, "
                    f"usable {gib(usable)}; use a GPU tier with more memory")
        return None

    sizes = [gpus] if gpus else [1, 2, 4, 8]
    w = walk(site, partition, gpu, sizes, evaluate)
    result = fill_choice(base_result(model, "finetune", site), w)
    result.update(method=method, seq_len=seq_len, batch_size=batch_size, grad_ckpt=grad_ckpt,
                  lora_r=lora_r if adapters else None,
                  lora_targets=lora_targets if adapters else None, optimizer=optimizer,
                  trainable_params=trainable, strategy=None, host_mem_gib=None)
    if w.chosen is not None:
        n = w.chosen.gpus
        result["host_mem_gib"] = -(-int(host_bytes(w.chosen)) // GIB)
        result["strategy"] = "fsdp" if n > 1 else "single-gpu"
        args = ["--method", method, "--seq-len", str(seq_len), "--batch-size", str(batch_size),
                "--grad-ckpt" if grad_ckpt else "--no-grad-ckpt", "--optimizer", optimizer]
        if adapters:
            args += ["--lora-r", str(lora_r), "--lora-targets", lora_targets]
        args += ["--nproc-per-node", str(n)] + (["--fsdp"] if n > 1 else [])
        result["engine_args"] = args
    elif suggest:
        from kit.plan.fixes import cheapest_fix, describe

        options = dict(method=method, seq_len=seq_len, batch_size=batch_size, grad_ckpt=grad_ckpt, lora_r=lora_r,
                       lora_targets=lora_targets, optimizer=optimizer, partition=partition, gpu=gpu, gpus=gpus,
                       trainer=trainer)
        fix = cheapest_fix(options, lambda o: plan_finetune(model, site, **o, suggest=False))
        if fix is None:
            result["suggestion"] = {"text": "no change of checkpointing, GPUs, method, optimizer or sequence length "
                                            "fits: use a smaller model", "change": None}
        else:
            result["suggestion"] = dict(fix, text=describe(fix))
    return result
