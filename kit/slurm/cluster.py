"""The cluster as Slurm describes it: partitions and nodes from `scontrol show partition|node -o`.

Slurm 22.05 has no `scontrol --json` (it came in 23.02): each entry is one `Key=Value ...` line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kit.errors import KitError
from kit.slurm.commands import run
from kit.slurm.parse import expand_hostlist, features, int_or, none_if_null, parse_gres, parse_kv_line, parse_time_limit


@dataclass
class Partition:
    name: str
    max_time_minutes: int | None  # None = UNLIMITED
    default_time_minutes: int | None  # None = not set (Slurm then uses MaxTime)
    nodes: list[str] = field(default_factory=list)
    state: str = "UP"
    is_default: bool = False


@dataclass
class Node:
    name: str
    cpus: int
    real_memory_mb: int
    features: set[str] = field(default_factory=set)
    active_features: set[str] = field(default_factory=set)
    gres: dict[str, int] = field(default_factory=dict)  # GPU type -> count; "" = untyped
    partitions: list[str] = field(default_factory=list)
    state: str = "UNKNOWN"

    @property
    def gpus(self) -> int:
        return sum(self.gres.values())


@dataclass
class Cluster:
    partitions: dict[str, Partition] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def default_partition(self) -> Partition | None:
        return next((p for p in self.partitions.values() if p.is_default), None)

    def partition_nodes(self, partition: str) -> list[Node]:
        """The nodes of a partition (KitError naming the known partitions if it does not exist)."""
        if partition not in self.partitions:
            known = ", ".join(sorted(self.partitions)) or "none"
            raise KitError(f"Slurm partition '{partition}' does not exist on this cluster (known: {known})")
        return [self.nodes[n] for n in self.partitions[partition].nodes if n in self.nodes]


def parse_partitions(text: str) -> dict[str, Partition]:
    """Parse `scontrol show partition -o` output."""
    parts: dict[str, Partition] = {}
    for line in text.splitlines():
        kv = parse_kv_line(line)
        name = kv.get("PartitionName")
        if not name:
            continue
        default_time = none_if_null(kv.get("DefaultTime"))
        parts[name] = Partition(
            name=name,
            max_time_minutes=parse_time_limit(kv.get("MaxTime", "UNLIMITED")),
            default_time_minutes=parse_time_limit(default_time) if default_time else None,
            nodes=expand_hostlist(kv.get("Nodes", "")),
            state=kv.get("State", "UNKNOWN"),
            is_default=kv.get("Default", "NO").upper() == "YES",
        )
    return parts


def parse_nodes(text: str) -> dict[str, Node]:
    """Parse `scontrol show node -o` output."""
    nodes: dict[str, Node] = {}
    for line in text.splitlines():
        kv = parse_kv_line(line)
        name = kv.get("NodeName")
        if not name:
            continue
        parts = none_if_null(kv.get("Partitions"))
        nodes[name] = Node(
            name=name,
            cpus=int_or(kv.get("CPUTot") or kv.get("CPUs")),
            real_memory_mb=int_or(kv.get("RealMemory")),
            features=features(kv.get("AvailableFeatures", kv.get("Features"))),
            active_features=features(kv.get("ActiveFeatures")),
            gres=parse_gres(kv.get("Gres")),
            partitions=[p for p in parts.split(",") if p] if parts else [],
            state=kv.get("State", "UNKNOWN"),
        )
    return nodes


def query_cluster(timeout: float = 30) -> Cluster:
    """Read partitions and nodes from the running cluster (`scontrol show partition|node -o`)."""
    partitions = parse_partitions(run(["scontrol", "show", "partition", "-o"], timeout=timeout))
    nodes = parse_nodes(run(["scontrol", "show", "node", "-o"], timeout=timeout))
    return Cluster(partitions=partitions, nodes=nodes)

