"""Wall time of `kit plan serve` on a catalog model, and proof that torch is not imported.

Runs the installed `kit` as a new process N times (what a user on a login node waits for),
prints the median, then lists the heaviest imports from `python -X importtime`. Run:

    .venv/bin/python benchmarks/cli_latency.py [N]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ARGS = ["plan", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--site", "quest", "--json"]
KIT = str(Path(sys.executable).parent / "kit")


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    env = dict(os.environ)
    subprocess.run([KIT, *ARGS], env=env, capture_output=True, check=True)  # warm the page cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([KIT, *ARGS], env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    print(f"kit {' '.join(ARGS)}")
    print(f"runs: {runs}  median: {statistics.median(times):.3f} s  min: {min(times):.3f} s  max: {max(times):.3f} s")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "kit.cli", *ARGS], env=env,
                          capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line[len("import time:"):].split("|"))
            if cumulative.isdigit():
                rows.append((int(cumulative), name))
    modules = {name.strip() for _, name in rows}
    heavy = sorted(m for m in ("torch", "transformers", "peft", "bitsandbytes", "weaviate", "pydantic") if m in modules)
    print(f"heavy modules imported: {heavy or 'none'}")
    print("top-level imports by cumulative time (us):")
    for cumulative, name in sorted((r for r in rows if not r[1].startswith(" ")), reverse=True)[:8]:
        print(f"  {cumulative:>8}  {name}")
    return 1 if heavy else 0


if __name__ == "__main__":
    sys.exit(main())
