"""The shape of a site file: every key, its type and what is allowed.

Validation uses msgspec (a maintained C library) rather than pydantic: kit runs on login
nodes and pydantic's schema build alone cost ~0.25 s per command. Unknown keys are errors
(``forbid_unknown_fields``) so a typo never passes silently.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

WALLTIME_RE = re.compile(r"^(?:(\d+)-)?(\d{1,3}):([0-5]\d):([0-5]\d)$")

Positive = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


def walltime_minutes(text: str) -> int:
    """'D-HH:MM:SS' or 'HH:MM:SS' -> minutes (seconds round up)."""
    m = WALLTIME_RE.match(text)
    if not m:
        raise ValueError(f"walltime {text!r} is not D-HH:MM:SS or HH:MM:SS")
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


class Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class Account(Strict):
    placeholder: str
    default: str | None = None
    pattern: str | None = None

    def __post_init__(self):
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise ValueError(f"pattern is not a valid regular expression: {e}") from None


class Runtime(Strict):
    binaries: Annotated[list[Literal["singularity", "apptainer"]], msgspec.Meta(min_length=1)]
    env_prefixes: Annotated[list[str], msgspec.Meta(min_length=1)]
    cache_dir: str
    tmp_dir: str
    module: str | None = None
    binds: list[str] = []
    fakeroot: bool = False


class Driver(Strict):
    cuda_max: Annotated[str, msgspec.Meta(pattern=r"^\d+\.\d+$")]
    version: str | None = None


class Paths(Strict):
    home: str
    project: str
    scratch: str
    model_cache: str
    image_dir: str
    state_dir: str
    services_dir: str | None = None  # shared services (kit service): NAME/service.json, lab keys, usage


# Memory units, exactly: GiB = 1024^3 bytes. Slurm's `--mem=NG` is N GiB (its units are powers of
# 1024) and its RealMemory is in MiB; installed memory (DIMMs, HBM, GDDR) comes in binary units,
# so "an 80GB card" or "a 192 GB node" is 80 or 192 GiB installed. Keys that held these numbers as
# `*_gb` were renamed `*_gib` (RENAMED_KEYS); a file with an old name gets an error naming the new one.
RENAMED_KEYS = {
    "memory_gb": "memory_gib",
    "mem_per_node_gb": "mem_per_node_gib",
    "mem_per_gpu_gb": "mem_per_gpu_gib",
}


class GpuTier(Strict):
    gres: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]+$")]  # as in --gres=gpu:TYPE:N
    model: str  # the card, as nvidia-smi names it
    memory_gib: Positive  # installed memory per GPU, GiB: the 80 of "80GB"
    usable_gib: PositiveFloat  # total memory per GPU as torch reports it, GiB
    compute_capability: Annotated[float, msgspec.Meta(ge=3.0, le=20.0)]
    gpus_per_node: Positive
    cost: PositiveFloat  # relative price of one GPU-hour; the planner picks the cheapest fit
    constraint: str | None = None
    cpus_per_node: Positive | None = None
    mem_per_node_gib: Positive | None = None  # installed host memory per node, GiB (Slurm RealMemory is MiB)
    nodes: Annotated[int, msgspec.Meta(ge=0)] | None = None

    def __post_init__(self):
        if self.usable_gib > self.memory_gib:
            raise ValueError(f"usable_gib {self.usable_gib} exceeds memory_gib {self.memory_gib}")

    @property
    def job_mem_gib(self) -> int | None:
        """The most host memory (GiB) a job asks on one of these nodes: 90 % of what is installed
        (the OS and Slurm keep the rest); None when the site does not say."""
        return int(self.mem_per_node_gib * 0.9) if self.mem_per_node_gib else None


class Partition(Strict):
    max_walltime: str | None = None  # D-HH:MM:SS, or null when unlimited/unknown
    default_walltime: str | None = None
    gpu_tiers: dict[str, GpuTier] = {}
    description: str | None = None

    def __post_init__(self):
        for key in ("max_walltime", "default_walltime"):
            value = getattr(self, key)
            if value is not None and not WALLTIME_RE.match(value):
                raise ValueError(f"{key} {value!r} is not D-HH:MM:SS or HH:MM:SS")

    @property
    def max_minutes(self) -> int | None:
        return walltime_minutes(self.max_walltime) if self.max_walltime else None


class Limits(Strict):
    gpus_per_user: Positive | None = None
    max_nodes_per_job: Positive = 1


class Defaults(Strict):
    gpu_partition: str
    cpu_partition: str | None = None
    walltime: str = "04:00:00"
    cpus_per_gpu: Positive = 8  # host CPUs and memory a job asks for per GPU (capped by the node)
    mem_per_gpu_gib: Positive = 64  # GiB: rendered as --mem=NG, which Slurm reads as GiB

    def __post_init__(self):
        if not WALLTIME_RE.match(self.walltime):
            raise ValueError(f"walltime {self.walltime!r} is not D-HH:MM:SS or HH:MM:SS")


class Network(Strict):
    port_range: tuple[int, int]
    tunnel: str
    # Where jobs reserve ports: a directory every job on a node sees (not a per-job private /tmp).
    port_dir: Annotated[str, msgspec.Meta(pattern=r"^/")] = "/tmp/kit-ports"

    def __post_init__(self):
        lo, hi = self.port_range
        if not (1024 < lo < hi <= 65535):
            raise ValueError("port_range must be [low, high] with 1024 < low < high <= 65535")


class Images(Strict):
    """Where labs get the images staff published (`kit images pull`)."""

    shared_dir: str | None = None  # a directory of published SIFs on the cluster (copied)
    registry: str | None = None  # oras://HOST/NAMESPACE: images are NAMESPACE/NAME:VERSION

    def __post_init__(self):
        if self.registry is not None and not re.match(r"^oras://[^/\s]+/\S+$", self.registry):
            raise ValueError(f"registry {self.registry!r} must look like oras://HOST/NAMESPACE")


class Sbatch(Strict):
    """Directives the site adds to, or removes from, every rendered job."""

    extra: list[str] = []
    drop: list[str] = []


class Site(Strict):
    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    scheduler: Literal["slurm"]
    login_host: str
    account: Account
    runtime: Runtime
    driver: Driver
    paths: Paths
    limits: Limits
    defaults: Defaults
    partitions: Annotated[dict[str, Partition], msgspec.Meta(min_length=1)]
    network: Network
    description: str = ""
    accounting: bool = False  # whether sacct works (slurmdbd configured)
    sbatch: Sbatch = Sbatch()
    images: Images = Images()
    assumed: dict[str, str] = {}  # key path -> why the value is assumed; staff verify these

    def __post_init__(self):
        names = ", ".join(self.partitions)
        gpu = self.partitions.get(self.defaults.gpu_partition)
        if gpu is None:
            raise ValueError(f"defaults.gpu_partition {self.defaults.gpu_partition!r} is not a partition ({names})")
        if not gpu.gpu_tiers:
            raise ValueError(f"defaults.gpu_partition {self.defaults.gpu_partition!r} has no gpu_tiers")
        cpu = self.defaults.cpu_partition
        if cpu is not None and cpu not in self.partitions:
            raise ValueError(f"defaults.cpu_partition {cpu!r} is not a partition ({names})")
        if gpu.max_minutes is not None and walltime_minutes(self.defaults.walltime) > gpu.max_minutes:
            raise ValueError(f"defaults.walltime {self.defaults.walltime} is over partition "
                             f"{self.defaults.gpu_partition}'s max_walltime {gpu.max_walltime}")

    def gpu_partitions(self) -> dict[str, Partition]:
        return {name: p for name, p in self.partitions.items() if p.gpu_tiers}
