"""The cheapest change that makes a fine-tuning plan fit, found by planning it.

When no allocation fits, each lever is tried in order of what it costs the user, and the first
whose plan fits is named, with that plan's allocation:

1. gradient checkpointing on: the same result for about a third more compute;
2. more or larger GPUs, when the request pinned a count (``--gpus``) or a tier (``--gpu``): the
   same result on more hardware (without a pin the plan already tried every count and tier);
3. a lighter method (memory.yaml's order: full, then lora, then qlora): QLoRA's 4-bit base;
4. the method's lighter optimizer (memory.yaml's ``lighter``, an 8-bit one);
5. a shorter sequence: the longest of seq_len/2, /4, ... (at least MIN_SEQ_LEN) that fits.

When no single lever fits, they are applied one after another in the same order and the first
combination that fits is named. Each lever is a real re-plan (``kit.plan.finetune``), so the fix
named is one the planner accepts.
"""

from __future__ import annotations

from typing import Callable

from kit.plan.memory import constants

MIN_SEQ_LEN = 256

# option -> (the `kit plan finetune` flag, the fine-tuning config key)
NAMES = {
    "grad_ckpt": ("--grad-ckpt", "training.gradient_checkpointing"),
    "gpus": ("--gpus", "--gpus"),
    "gpu": ("--gpu", "--gpu"),
    "method": ("--method", "method"),
    "optimizer": ("--optimizer", "training.optimizer"),
    "seq_len": ("--seq-len", "training.seq_len"),
}
WHY = {
    "grad_ckpt": "gradient checkpointing",
    "gpus": "more GPUs",
    "gpu": "larger GPUs",
    "method": "a lighter method",
    "optimizer": "an 8-bit optimizer",
    "seq_len": "a shorter sequence",
}


def _levers(options: dict) -> list[list[dict]]:
    """Candidate changes per lever, in order; each lever's candidates are tried in order."""
    c = constants()["finetune"]
    levers: list[list[dict]] = []
    if not options["grad_ckpt"]:
        levers.append([{"grad_ckpt": True}])
    if options.get("gpus") or options.get("gpu"):
        levers.append([{"gpus": None, "gpu": None}])
    methods = list(c["methods"])
    lighter = methods[methods.index(options["method"]) + 1:]
    if lighter:
        levers.append([{"method": m} for m in lighter])
    opt = c["optimizers"][options["optimizer"]].get("lighter")
    if opt:
        levers.append([{"optimizer": opt}])
    seq, shorter = options["seq_len"] // 2, []
    while seq >= MIN_SEQ_LEN:
        shorter.append({"seq_len": seq})
        seq //= 2
    if shorter:
        levers.append(shorter)
    return levers


def cheapest_fix(options: dict, plan: Callable[[dict], dict]) -> dict | None:
    """The first change (see the module's order) whose plan fits, or None.

    ``options`` are plan_finetune's resolved options (method, seq_len, grad_ckpt, optimizer,
    gpus, gpu, ...); ``plan(options)`` plans them without looking for fixes itself. Returns
    {"change": {option: value}, "plan": {partition, gpu_type, gpus, total_gib, usable_gib}}."""
    levers = _levers(options)
    for lever in levers:
        for change in lever:
            found = _try(options, change, plan)
            if found:
                return found
    combined: dict = {}
    for lever in levers:  # nothing alone: add the levers one after another
        for change in lever:
            found = _try(options, {**combined, **change}, plan)
            if found:
                return found
        combined.update(lever[-1])
    return None


def _try(options: dict, change: dict, plan: Callable[[dict], dict]) -> dict | None:
    result = plan({**options, **change})
    if not result["fits"]:
        return None
    if "gpus" in change and change["gpus"] is None:  # name what the plan chose instead of the pins
        change = {k: v for k, v in (("gpus", result["gpus"]), ("gpu", result["gpu_type"]))
                  if options.get(k) and options[k] != v}
    return {"change": change, "plan": {"partition": result["partition"], "gpu_type": result["gpu_type"],
                                       "gpus": result["gpus"], "total_gib": result["per_gpu"]["total_gib"],
                                       "usable_gib": result["per_gpu"]["usable_gib"]}}


def describe(fix: dict, style: str = "flags") -> str:
    """The fix in words: as `kit plan finetune` flags (``style="flags"``) or as the keys of a
    fine-tuning config (``style="config"``)."""
    col = 0 if style == "flags" else 1
    parts = []
    for option, value in fix["change"].items():
        name = NAMES[option][col]
        if option == "grad_ckpt":
            parts.append(name if col == 0 else f"{name}: true")
        elif col == 0 or name.startswith("--"):
            parts.append(f"{name} {value}")
        else:
            parts.append(f"{name}: {value}")
    p = fix["plan"]
    why = " and ".join(WHY[o] for o in fix["change"])
    return (f"it fits with {why}: {', '.join(parts)} (then {p['gpus']}x {p['gpu_type']} on {p['partition']}, "
            f"{p['total_gib']} of {p['usable_gib']} GiB per GPU)")
