"""Compare a site config with the live cluster kit runs on; report every drift.

What is compared: each partition exists and has the configured max walltime; each GPU tier
has nodes in its partition carrying its GRES type and constraint feature, with the configured
GPUs per node (and CPUs, memory, node count where the file states them). Staff run this after
a cluster change (``kit sites check NAME``).
"""

from __future__ import annotations

from kit.slurm import format_minutes, query_cluster


def check_site(site, cluster=None) -> list[dict]:

    cluster = cluster if cluster is not None else query_cluster()
    findings: list[dict] = []

    def drift(key: str, message: str) -> None:
        findings.append({"key": key, "message": message})

    for pname, part in site.partitions.items():
        live = cluster.partitions.get(pname)
        key = f"partitions.{pname}"
        if live is None:
            drift(key, f"no such partition on the cluster (it has: {', '.join(sorted(cluster.partitions))})")
            continue
        want = part.max_minutes
        if want != live.max_time_minutes:
            drift(f"{key}.max_walltime", f"site says {format_minutes(want)}, cluster MaxTime is {format_minutes(live.max_time_minutes)}")
        nodes = [cluster.nodes[n] for n in live.nodes if n in cluster.nodes]
        for tname, tier in part.gpu_tiers.items():
            check_tier(f"{key}.gpu_tiers.{tname}", tier, nodes, pname, drift)
    return findings


def check_tier(key: str, tier, nodes: list, partition: str, drift) -> None:
    with_gres = [n for n in nodes if n.gres.get(tier.gres, 0) > 0]
    if not with_gres:
        types = sorted({t or "(untyped)" for n in nodes for t in n.gres})
        drift(f"{key}.gres", f"no node in {partition} has gpu:{tier.gres} (GRES types there: {', '.join(types) or 'none'})")
        return
    matching = [n for n in with_gres if tier.constraint is None or tier.constraint in n.features]
    if not matching:
        features = sorted({f for n in with_gres for f in n.features})
        drift(f"{key}.constraint", f"no gpu:{tier.gres} node in {partition} has feature {tier.constraint!r} "
                                   f"(features there: {', '.join(features) or 'none'})")
        return
    counts = sorted({n.gres[tier.gres] for n in matching})
    if counts != [tier.gpus_per_node]:
        drift(f"{key}.gpus_per_node", f"site says {tier.gpus_per_node}, matching nodes have "
                                      f"{'/'.join(map(str, counts))} gpu:{tier.gres} ({names(matching)})")
    if tier.cpus_per_node is not None:
        cpus = sorted({n.cpus for n in matching})
        if cpus != [tier.cpus_per_node]:
            drift(f"{key}.cpus_per_node", f"site says {tier.cpus_per_node}, nodes have {'/'.join(map(str, cpus))}")
    if tier.mem_per_node_gib is not None:
        # RealMemory is in MiB (1024 per GiB): what the OS leaves of the installed GiB. It may be
        # up to 15 % below the installed size, and never above it.
        installed_mib = tier.mem_per_node_gib * 1024
        off = [n for n in matching if not 0.85 * installed_mib <= n.real_memory_mb <= installed_mib]
        if off:
            mems = "/".join(f"{m} MiB ({m / 1024:.1f} GiB)" for m in sorted({n.real_memory_mb for n in off}))
            drift(f"{key}.mem_per_node_gib", f"site says {tier.mem_per_node_gib} GiB ({installed_mib} MiB) installed, "
                                             f"nodes have RealMemory {mems} ({names(off)}); "
                                             f"expected 85-100 % of the installed memory")
    if tier.nodes is not None and tier.nodes != len(matching):
        drift(f"{key}.nodes", f"site says {tier.nodes}, the cluster has {len(matching)} ({names(matching)})")


def names(nodes: list, limit: int = 4) -> str:
    shown = [n.name for n in nodes[:limit]]
    return ", ".join(shown) + (f" and {len(nodes) - limit} more" if len(nodes) > limit else "")
