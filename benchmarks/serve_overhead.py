"""kit's own overhead from `sbatch` to a healthy endpoint, on the local Slurm with the stand-in
engine (tests/standin/), against the engine's own start-up time.

(a) the engine alone: the stand-in TGI launcher started directly, until /health answers 200;
(b) `kit serve` (plan, render, record, sbatch) then `kit wait` until it prints the URL;
overhead = (b) - (a). The job log's timestamps split (b) into Slurm's start latency, the job
script's checks, and readiness detection. Needs the local cluster (`make slurm-up`). Run:

    .venv/bin/python benchmarks/serve_overhead.py [RUNS]
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from standin.site import standin_site  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def engine_alone(setup: dict) -> float:
    port = free_port()
    env = dict(os.environ, **setup["env"])
    start = time.perf_counter()
    proc = subprocess.Popen(["text-generation-launcher", "--model-id", str(setup["model"]), "--port", str(port),
                             "--prometheus-port", str(free_port()), "--shard-uds-path", f"/tmp/bench-{port}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not healthy(port):
            if proc.poll() is not None:
                raise SystemExit("the stand-in engine exited")
            time.sleep(0.05)
        return time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def kit(setup: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kit.cli", *args], env=dict(os.environ, **setup["env"]),
                          capture_output=True, text=True, timeout=300)


def stamp(line: str) -> float:
    return datetime.strptime(line.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%SZ").timestamp()


def through_kit(setup: dict, i: int) -> dict:
    start = time.perf_counter()
    wall_start = time.time()
    served = kit(setup, "serve", str(setup["model"]), "--json", "--name", f"bench-{i}-{os.getpid()}")
    if served.returncode:
        raise SystemExit(served.stderr)
    record = json.loads(served.stdout)
    submitted = time.perf_counter() - start
    waited = kit(setup, "wait", record["job_id"], "--timeout", "120")
    total = time.perf_counter() - start
    if waited.returncode:
        raise SystemExit(waited.stderr)
    log = Path(setup["base"], "state", "jobs", record["name"], f"slurm-{record['job_id']}.out").read_text()
    lines = [line for line in log.splitlines() if " kit-job: " in line]
    job_start = stamp(lines[0])  # whole seconds
    engine_start = stamp(next(line for line in lines if "starting TGI" in line))
    kit(setup, "stop", record["job_id"])
    return {"total": total, "submit": submitted, "slurm_start": job_start - wall_start,
            "script_setup": engine_start - job_start}


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory() as tmp:
        setup = standin_site(Path(tmp))
        alone = [engine_alone(setup) for _ in range(runs)]
        via = [through_kit(setup, i) for i in range(runs)]
    a = statistics.median(alone)
    b = statistics.median(v["total"] for v in via)
    print(f"runs: {runs}")
    print(f"(a) stand-in engine alone, start to /health 200: median {a:.2f} s  ({', '.join(f'{x:.2f}' for x in alone)})")
    print(f"(b) kit serve + kit wait, to the printed URL:       median {b:.2f} s  "
          f"({', '.join(format(v['total'], '.2f') for v in via)})")
    print(f"    kit serve itself (plan, render, record, sbatch): median {statistics.median(v['submit'] for v in via):.2f} s")
    print(f"    Slurm: submit to job start (1 s log resolution):  median {statistics.median(v['slurm_start'] for v in via):.1f} s")
    print(f"    job script checks before the engine starts:      median {statistics.median(v['script_setup'] for v in via):.1f} s")
    print(f"overhead (b) - (a): {b - a:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
