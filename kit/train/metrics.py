"""What the trainer tells the outside world: metrics.jsonl (one line per step, appended and flushed),
run.json (written at each start) and summary.json (written last, when the run is finished)."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from kit.fs import write_json


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class MetricsLog:
    """OUTPUT_DIR/metrics.jsonl. On resume, lines after the checkpoint's step (logged by the run that
    was interrupted, and about to be redone) are dropped so that each step appears once."""

    def __init__(self, output_dir: Path, resumed_step: int | None):
        self.path = Path(output_dir) / "metrics.jsonl"
        if self.path.exists():
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and _step(line) is not None and _step(line) <= (resumed_step or 0)]
            tmp = self.path.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            tmp.replace(self.path)

    def write(self, entry: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def gpu_mem_gib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


class StepTimer:
    def __init__(self):
        self.start = time.perf_counter()

    def lap(self) -> float:
        t = time.perf_counter()
        elapsed, self.start = t - self.start, t
        return elapsed


def write_run(output_dir: Path, info: dict) -> None:
    write_json(Path(output_dir) / "run.json", {"started": now(), "pid": os.getpid(), **info})


def write_summary(output_dir: Path, summary: dict) -> None:
    write_json(Path(output_dir) / "summary.json", {**summary, "finished": now()})
