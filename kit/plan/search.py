"""The search over allocations: a site's GPU options in order of cost, the first that fits wins,
and every option turned down keeps its reason.

Options are ordered by cost (GPUs x the tier's relative cost, then the tier's order in the site
file, then fewer GPUs). What "fits" means is the caller's: serve and fine-tune plans pass their
own ``evaluate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from kit.errors import KitError
from kit.models.arch import Layout
from kit.models.resolve import ModelInfo
from kit.plan.memory import GIB, Breakdown


@dataclass
class Option:
    partition: str
    tier_name: str
    tier: object  # kit.sites.schema.GpuTier
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
         evaluate: Callable[[Option], tuple[Breakdown, str | None]], *, max_nodes: int | None = None,
         nodes_why: str | None = None) -> Walk:
    """Try options from the cheapest; the first that ``evaluate`` accepts (reason None) wins.

    Options span at most the site's ``limits.max_nodes_per_job`` nodes, or ``max_nodes`` when the
    task allows fewer (``nodes_why`` says why)."""
    part_name, tiers = pick_tiers(site, partition, gpu)
    order = {name: i for i, name in enumerate(tiers)}
    options = sorted(
        (Option(part_name, name, tier, n) for name, tier in tiers.items() for n in sizes),
        key=lambda o: (o.cost, order[o.tier_name], o.gpus),
    )
    result = Walk()
    node_limit, why = site.limits.max_nodes_per_job, "limits.max_nodes_per_job"
    if max_nodes is not None and max_nodes < node_limit:
        node_limit, why = max_nodes, nodes_why
    for option in options:
        per_node = option.tier.gpus_per_node
        if option.gpus > per_node * node_limit:
            result.reject(option.label, f"{option.tier_name} nodes have {per_node} GPU{'s' if per_node > 1 else ''} and jobs may use "
                                        f"{node_limit} node{'s' if node_limit > 1 else ''} ({why})")
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

