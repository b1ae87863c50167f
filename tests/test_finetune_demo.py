"""Fine-tune -> evaluate, as the demo runs it (examples/extraction/demo.sh): LoRA on
SmolLM2-135M-Instruct (a real small chat model, offline) makes it score higher on held-out
extraction records than the base model, by `kit eval`'s own scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_tuned_adapter_beats_the_base_model_on_held_out_records(tmp_path):
    env = dict(os.environ, STEPS="8", TEST="8", COMPARE_ARGS="--json", PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "examples" / "extraction" / "demo.sh"), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = json.loads(proc.stdout[proc.stdout.index("\n{") + 1:])
    base, tuned = scores["micro"]["base"]["f1"], scores["micro"]["tuned"]["f1"]
    assert tuned > base, (base, tuned)
    assert scores["records"]["tuned"]["pred"] == 8  # every held-out record answered
    losses = [json.loads(line)["loss"] for line in (tmp_path / "extraction" / "lora" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
