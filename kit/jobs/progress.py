"""A fine-tuning job's progress, from what the trainer writes into its output directory:
``metrics.jsonl`` (one object per logged step, appended), ``run.json`` (at each start) and
``summary.json`` (written last, when the run finished).

The ETA comes from the pace of the current run only: the steps logged after the one it resumed
from (run.json), in the last stretch that rises (the time spent requeued is no pace).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

TAIL_BYTES = 64 * 1024  # the end of metrics.jsonl is enough: only recent steps matter
PACE_STEPS = 20  # the ETA's window: the last N logged steps of the current run


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def metrics_tail(path: Path) -> list[dict]:
    """The complete lines at the end of metrics.jsonl (a line being written is skipped)."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if size > TAIL_BYTES:
        lines = lines[1:]  # the first line is cut
    out = []
    for line in lines[:-1]:  # the last piece is empty, or a line still being written
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and isinstance(item.get("step"), int):
            out.append(item)
    return out


def _seconds(text) -> float | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def seconds_per_step(items: list[dict], since_step: int | None = None) -> float | None:
    """From the last stretch of rising steps logged after ``since_step`` (the step the current
    run resumed from: the time before it includes the requeue), at most PACE_STEPS long."""
    run = items[-1:]
    for item in reversed(items[:-1]):
        if item["step"] >= run[0]["step"] or len(run) > PACE_STEPS:
            break
        if since_step is not None and item["step"] <= since_step:
            break
        run.insert(0, item)
    if len(run) < 2:
        return None
    t0, t1 = _seconds(run[0].get("time")), _seconds(run[-1].get("time"))
    steps = run[-1]["step"] - run[0]["step"]
    if t0 is None or t1 is None or steps <= 0 or t1 < t0:
        return None
    return (t1 - t0) / steps


def progress(output_dir: str | Path) -> dict | None:
    """{step, total_steps, epoch, loss, learning_rate, tokens_per_s, gpu_mem_gib, updated,
    eta_s, finished, resumed_from_step, summary}; None before the trainer logged anything."""
    out = Path(output_dir)
    summary = _read_json(out / "summary.json")
    run = _read_json(out / "run.json") or {}
    items = metrics_tail(out / "metrics.jsonl")
    if not items and summary is None:
        return None
    last = items[-1] if items else {}
    total = last.get("total_steps")
    result = {
        "step": last.get("step"),
        "total_steps": total,
        "epoch": last.get("epoch"),
        "loss": last.get("loss"),
        "learning_rate": last.get("learning_rate"),
        "tokens_per_s": last.get("tokens_per_s"),
        "gpu_mem_gib": last.get("gpu_mem_gib"),
        "updated": last.get("time"),
        "eta_s": None,
        "finished": summary is not None,
        "resumed_from_step": run.get("resumed_from_step"),
        "summary": summary,
    }
    pace = seconds_per_step(items, run.get("resumed_from_step"))
    if summary is not None:
        result["eta_s"] = 0
    elif pace is not None and isinstance(total, int) and result["step"] is not None:
        result["eta_s"] = round(max(0, total - result["step"]) * pace)
    return result


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, _ = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def describe(p: dict | None) -> str:
    """One line: "step 120/1000 (12 %), loss 1.234, 850 tokens/s, ETA 1 h 05 min"."""
    if p is None:
        return "no steps logged yet"
    if p["finished"]:
        s = p["summary"] or {}
        loss = f", final loss {s['final_loss']:.4g}" if isinstance(s.get("final_loss"), (int, float)) else ""
        return f"finished: {s.get('steps', p['step'])} steps{loss}"
    parts = []
    if p["step"] is not None:
        text = f"step {p['step']}"
        if isinstance(p["total_steps"], int) and p["total_steps"] > 0:
            text += f"/{p['total_steps']} ({100 * p['step'] // p['total_steps']} %)"
        parts.append(text)
    if isinstance(p["loss"], (int, float)):
        parts.append(f"loss {p['loss']:.4g}")
    if isinstance(p["tokens_per_s"], (int, float)):
        parts.append(f"{p['tokens_per_s']:.0f} tokens/s")
    if p["eta_s"] is not None:
        parts.append(f"ETA {duration(p['eta_s'])}")
    if p["resumed_from_step"] is not None:
        parts.append(f"resumed from step {p['resumed_from_step']}")
    return ", ".join(parts)
