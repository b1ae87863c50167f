"""A fine-tuning job's progress from the trainer's files (hand-computed cases)."""

import json

from kit.jobs.progress import describe, progress


def line(step, t, total=100, loss=2.0):
    return json.dumps({"step": step, "total_steps": total, "epoch": step / 50, "loss": loss, "learning_rate": 1e-4,
                       "tokens_per_s": 800.0, "gpu_mem_gib": None, "time": f"2026-12-01T12:{t // 60:02d}:{t % 60:02d}Z"})


def test_nothing_logged_yet(tmp_path):
    assert progress(tmp_path) is None and describe(None) == "no steps logged yet"


def test_eta_from_the_current_runs_pace_only(tmp_path):
    # run 1: steps 1-20 at 2 s/step; requeued for 10 minutes; run 2 resumed from step 20 at 1 s/step,
    # and a line still being written at the end
    lines = [line(s, 2 * s) for s in range(1, 21)] + [line(s, 600 + (s - 20)) for s in range(21, 31)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 31, "tot')
    (tmp_path / "run.json").write_text(json.dumps({"resumed_from_step": 20}))
    p = progress(tmp_path)
    assert p["step"] == 30 and p["total_steps"] == 100 and p["loss"] == 2.0
    assert p["eta_s"] == 70  # 70 steps left at 1 s/step (steps 21-30), not the pace with the requeue in it
    assert describe(p) == "step 30/100 (30 %), loss 2, 800 tokens/s, ETA 1 min, resumed from step 20"


def test_finished(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(line(100, 200) + "\n")
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 100, "final_loss": 0.5}))
    p = progress(tmp_path)
    assert p["finished"] and p["eta_s"] == 0
    assert describe(p) == "finished: 100 steps, final loss 0.5"
