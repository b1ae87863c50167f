"""Thin layer over Slurm's command-line tools (stdlib only).

Everything here talks to Slurm through its commands (`scontrol`, `sbatch`, ...), because that is
what a login node offers. Slurm 22.05 has no `scontrol --json` (it came in 23.02), so the cluster
is read from `scontrol show partition -o` / `scontrol show node -o`: one `Key=Value ...` line per
entry.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from kit.errors import KitError

__all__ = [
    "Cluster",
    "Node",
    "Partition",
    "expand_hostlist",
    "format_minutes",
    "parse_gres",
    "parse_kv_line",
    "parse_nodes",
    "parse_partitions",
    "parse_time_limit",
    "query_cluster",
    "require",
    "run",
]


# --- running Slurm commands ----------------------------------------------------------------


def require(cmd: str) -> str:
    """Return the path of Slurm command `cmd`, or raise a KitError saying how to get it."""
    path = shutil.which(cmd)
    if path is None:
        raise KitError(
            f"Slurm command '{cmd}' not found on PATH: run kit on a cluster login node, "
            "or load the site's Slurm module"
        )
    return path


def _error_line(stderr: str, stdout: str) -> str:
    """Slurm's own error as one line: its `error:` lines (else its last line), joined by '; '."""
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()]
    picked = errors or lines[-1:]
    if not picked:
        picked = [ln.strip() for ln in (stdout or "").splitlines() if ln.strip()][-1:]
    seen: list[str] = []
    for ln in picked:
        if ln not in seen:
            seen.append(ln)
    return "; ".join(seen) or "no error message"


def run(args: list[str], timeout: float = 30) -> str:
    """Run a Slurm command and return its stdout.

    A missing command, a non-zero exit or a timeout becomes a KitError naming the command and
    carrying Slurm's own error line.
    """
    if not args:
        raise ValueError("run() needs a command")
    args = [str(a) for a in args]
    rc, out, err = _try(args, timeout)
    if rc != 0:
        raise KitError(f"Slurm command '{' '.join(args)}' failed (exit {rc}): {_error_line(err, out)}")
    return out


# --- time limits ---------------------------------------------------------------------------

_UNLIMITED = {"UNLIMITED", "INFINITE", "-1"}
_TIME_RE = re.compile(
    r"""^(?:(?P<days>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?   # D-H[:M[:S]]
        |(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$                      # M | M:S | H:M:S
    """,
    re.VERBOSE,
)


def parse_time_limit(text: str) -> int | None:
    """Parse a Slurm time limit into whole minutes; None means UNLIMITED/INFINITE.

    Accepts Slurm's formats: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`,
    `UNLIMITED`, `INFINITE` (case-insensitive). Seconds round up to the next minute, as Slurm does.
    """
    if not isinstance(text, str):
        raise KitError(f"invalid Slurm time limit {text!r}: expected a string like 2-00:00:00")
    s = text.strip()
    if s.upper() in _UNLIMITED:
        return None
    m = _TIME_RE.match(s)
    if m is None:
        raise KitError(
            f"invalid Slurm time limit {text!r}: use D-HH:MM:SS, HH:MM:SS, MM:SS, minutes "
            "or UNLIMITED"
        )
    g = {k: int(v) for k, v in m.groupdict().items() if v is not None}
    if "days" in g:
        minutes = (g["days"] * 24 + g["dh"]) * 60 + g.get("dm", 0)
        seconds = g.get("ds", 0)
    elif "c" in g:  # H:M:S
        minutes = g["a"] * 60 + g["b"]
        seconds = g["c"]
    elif "b" in g:  # M:S
        minutes, seconds = g["a"], g["b"]
    else:  # M
        minutes, seconds = g["a"], 0
    return -(-(minutes * 60 + seconds) // 60)  # whole minutes, partial ones round up


def format_minutes(minutes: int | None) -> str:
    """Format minutes the way sbatch accepts them: `D-HH:MM:SS` from one day on, else `HH:MM:SS`.

    None formats as `UNLIMITED`.
    """
    if minutes is None:
        return "UNLIMITED"
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 0:
        raise ValueError(f"minutes must be a non-negative int, got {minutes!r}")
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{mins:02d}:00"
    return f"{hours:02d}:{mins:02d}:00"


# --- hostlists -----------------------------------------------------------------------------

_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside [...]."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise KitError(f"invalid hostlist {text!r}: unbalanced ']'")
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise KitError(f"invalid hostlist {text!r}: unbalanced '['")
    out.append("".join(cur))
    return out


def _expand_brackets(body: str, whole: str) -> list[str]:
    values: list[str] = []
    for part in body.split(","):
        m = _RANGE_RE.match(part.strip())
        if m is None:
            raise KitError(f"invalid hostlist {whole!r}: bad range {part!r}")
        lo_s, hi_s = m.group(1), m.group(2)
        if hi_s is None:
            values.append(lo_s)
            continue
        lo, hi = int(lo_s), int(hi_s)
        if hi < lo:
            raise KitError(f"invalid hostlist {whole!r}: range {part!r} runs backwards")
        width = len(lo_s)  # Slurm pads to the width of the lower bound: n[01-10], n[009-011]
        values.extend(str(i).zfill(width) for i in range(lo, hi + 1))
    return values


def expand_hostlist(text: str) -> list[str]:
    """Expand a Slurm hostlist like `qgpu[2001-2003,3005],qnode0001` into host names.

    Follows `scontrol show hostnames`: order is kept, duplicates are kept, zero padding follows
    the lower bound, and several bracket groups give their product (`a[1-2]b[3-4]`).
    `""` and `(null)` give []. Raises KitError on malformed input. One liberty: text after the
    last bracket group (`n[1-2]-ib`) is kept as a suffix, where Slurm 22.05 rejects it.
    """
    text = (text or "").strip()
    if text in ("", "(null)"):
        return []
    hosts: list[str] = []
    for item in _split_top(text):
        item = item.strip()
        if not item:
            continue
        pieces = re.split(r"(\[[^\[\]]*\])", item)
        choices: list[list[str]] = []
        for piece in pieces:
            if piece.startswith("[") and piece.endswith("]"):
                choices.append(_expand_brackets(piece[1:-1], text))
            elif piece:
                if "[" in piece or "]" in piece:
                    raise KitError(f"invalid hostlist {text!r}")
                choices.append([piece])
        hosts.extend("".join(combo) for combo in itertools.product(*choices))
    return hosts


# --- scontrol output -----------------------------------------------------------------------

_KEY_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)=(.*)$")


def parse_kv_line(line: str) -> dict[str, str]:
    """Parse one `scontrol show ... -o` line into {key: value}.

    Values may contain spaces (`OS=Linux 6.1 #1 SMP ...`, `Reason=...`): a word that does not
    start with `Key=` continues the previous value.
    """
    out: dict[str, str] = {}
    last: str | None = None
    for word in line.split():
        m = _KEY_RE.match(word)
        if m:
            last = m.group(1)
            out[last] = m.group(2)
        elif last is not None:
            out[last] = f"{out[last]} {word}"
    return out


def _none_if_null(value: str | None) -> str | None:
    if value is None or value in ("(null)", "N/A", "NONE", ""):
        return None
    return value


def parse_gres(text: str | None) -> dict[str, int]:
    """GPU GRES of a node as {type: count}; an untyped `gpu:4` is {"": 4}.

    Handles `gpu:a100:4`, `gpu:a100:4(S:0-1)`, `gpu:a100:2,gpu:h100:4`, `gpu:4`, `gpu`,
    `(null)`; non-GPU GRES (mps, shard, nic) are left out.
    """
    gres: dict[str, int] = {}
    value = _none_if_null(text)
    if value is None:
        return gres
    value = re.sub(r"\([^)]*\)", "", value)  # socket bindings: (S:0-1), (S:0,1)
    for item in value.split(","):
        parts = [p for p in item.strip().split(":") if p != "no_consume"]
        if not parts or parts[0] != "gpu":
            continue
        gtype, count = "", 1
        if len(parts) == 2:
            if parts[1].isdigit():
                count = int(parts[1])
            else:
                gtype = parts[1]
        elif len(parts) >= 3:
            gtype = parts[1]
            count = int(parts[2]) if parts[2].isdigit() else 1
        gres[gtype] = gres.get(gtype, 0) + count
    return gres


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _features(value: str | None) -> set[str]:
    value = _none_if_null(value)
    return {f for f in value.split(",") if f} if value else set()


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
        default_time = _none_if_null(kv.get("DefaultTime"))
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
        parts = _none_if_null(kv.get("Partitions"))
        nodes[name] = Node(
            name=name,
            cpus=_int(kv.get("CPUTot") or kv.get("CPUs")),
            real_memory_mb=_int(kv.get("RealMemory")),
            features=_features(kv.get("AvailableFeatures", kv.get("Features"))),
            active_features=_features(kv.get("ActiveFeatures")),
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


# --- jobs ----------------------------------------------------------------------------------

# Slurm states after which a job holds nothing any more.
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}


@dataclass
class JobState:
    job_id: str
    state: str  # PENDING, RUNNING, COMPLETED, ... or UNKNOWN
    reason: str | None = None
    nodes: str | None = None
    exit_code: str | None = None
    source: str = "scontrol"

    @property
    def finished(self) -> bool:
        return self.state.split()[0] in FINISHED


def _try(args: list[str], timeout: float = 30) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a Slurm command; only a missing command or a timeout raises."""
    path = require(args[0])
    try:
        proc = subprocess.run([path, *args[1:]], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise KitError(f"Slurm command '{' '.join(args)}' did not answer within {timeout:g} s: "
                       "is the Slurm controller (slurmctld) reachable?") from None
    except OSError as exc:
        raise KitError(f"cannot run Slurm command '{' '.join(args)}': {exc.strerror or exc}") from None
    return proc.returncode, proc.stdout, proc.stderr


class SubmitUncertain(KitError):
    """sbatch did not answer: the job may or may not be queued."""


def submit(script: str, *, cwd: str, env: dict[str, str] | None = None, test_only: bool = False) -> str:
    """sbatch a script file; return the job id (or sbatch's --test-only answer)."""
    args = ["sbatch", "--test-only", script] if test_only else ["sbatch", "--parsable", script]
    path = require("sbatch")
    try:
        proc = subprocess.run([path, *args[1:]], capture_output=True, text=True, cwd=cwd, env=env,
                              stdin=subprocess.DEVNULL, timeout=60)
    except subprocess.TimeoutExpired:
        raise SubmitUncertain(f"sbatch did not answer within 60 s: the job may be queued anyway; "
                              f"check `squeue --me` before submitting again (record: {cwd})") from None
    if proc.returncode != 0:
        raise KitError(f"sbatch refused the job: {_error_line(proc.stderr, proc.stdout)}")
    if test_only:
        return (proc.stderr or proc.stdout).strip()
    return proc.stdout.strip().split(";")[0]


def _scontrol_job(job_id: str) -> str | None:
    """`scontrol show job -o` output, None for a job Slurm does not know; other errors raise."""
    rc, out, err = _try(["scontrol", "show", "job", str(job_id), "-o"])
    if rc == 0 and "JobId=" in out:
        return out
    if "Invalid job id" in (err + out):
        return None
    raise KitError(f"scontrol show job {job_id} failed: {_error_line(err, out)}")


def job_exists(job_id: str) -> bool:
    return _scontrol_job(job_id) is not None


def job_state(job_id: str, accounting: bool = False) -> JobState:
    """Live state from scontrol (it keeps finished jobs for MinJobAge), then sacct where the site
    has accounting; UNKNOWN when Slurm has forgotten the job."""
    out = _scontrol_job(job_id)
    if out is not None:
        kv = parse_kv_line(out.splitlines()[0])
        reason = _none_if_null(kv.get("Reason"))
        return JobState(str(job_id), kv.get("JobState", "UNKNOWN"), None if reason == "None" else reason,
                        _none_if_null(kv.get("NodeList")), kv.get("ExitCode"), "scontrol")
    if accounting and shutil.which("sacct"):
        rc, out, _ = _try(["sacct", "-X", "-n", "-P", "-j", str(job_id), "-o", "State,ExitCode,NodeList"])
        line = out.strip().splitlines()[0] if rc == 0 and out.strip() else ""
        if line:
            state, code, nodes = (line.split("|") + ["", "", ""])[:3]
            return JobState(str(job_id), state, None, nodes or None, code or None, "sacct")
    return JobState(str(job_id), "UNKNOWN", "Slurm no longer knows this job", source="none")


def cancel(job_id: str) -> None:
    run(["scancel", str(job_id)])
