"""`python -m kit.train CONFIG --nproc N`: N training processes on this node, started by torch's
elastic launcher (what `torchrun --standalone` runs), with kit's stop signals and exit statuses.

Plain torchrun is not enough for a job that must checkpoint before its walltime: it forwards a
signal to its workers but kills them 30 s later (torch < 2.12 cannot change that), and it exits 1
whatever they returned, so "checkpointed, requeue me" (75) is lost. Here the launcher runs in a
thread (torch installs its signal handlers only on the main thread), and a stop signal
(USR1, TERM, INT) to this process writes a stop file that every worker reads after its optimizer
step (kit.train.trainer.StopRequest): they agree on the step, checkpoint and exit 75, in their own
time. The status is the workers': 0 when all finished, else 75 or 2 if one returned it, else 1.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

STOP_FILE_ENV = "KIT_TRAIN_STOP_FILE"
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


def launch(config: str, nproc: int) -> int:
    import torch
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if torch.cuda.is_available() and torch.cuda.device_count() < nproc:
        print(f"kit: error: --nproc {nproc}: one process per GPU, and this node shows "
              f"{torch.cuda.device_count()} GPUs", file=sys.stderr)
        return 2
    control = Path(tempfile.mkdtemp(prefix="kit-train-"))
    stop = control / "stop"

    def request_stop(signum, frame):
        stop.write_text(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    os.environ[STOP_FILE_ENV] = str(stop)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // nproc)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # kit reports the outcome
    launch_config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"kit-train-{os.getpid()}",
                                 rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                                 logs_specs=DefaultLogsSpecs(log_dir=str(control / "logs")))
    outcome: dict = {}

    def run():
        try:
            elastic_launch(launch_config, sys.executable)("-u", "-m", "kit.train", config)
            outcome["status"] = 0
        except ChildFailedError as e:
            outcome["failures"] = e.failures
        except Exception as e:  # the rendezvous or a start failed: nothing trained
            outcome["error"] = f"{type(e).__name__}: {e}"

    thread = threading.Thread(target=run, name="kit-train-launcher", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)  # short waits: signal handlers run on this thread in between
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(control, ignore_errors=True)
    return status(outcome)


def status(outcome: dict) -> int:
    """0; or 75 if a worker returned it (it got there only past the barrier that ends a complete
    checkpoint; the launcher then stops the others, which may end by that signal as they exit);
    or 2 (bad input, already said); or 1 with one line."""
    if "status" in outcome:
        return outcome["status"]
    if "error" in outcome:
        print(f"kit: error: could not start the training processes: {outcome['error']}", file=sys.stderr)
        return 1
    failures = outcome["failures"]
    codes = {f.exitcode for f in failures.values()}
    for code in (75, 2):
        if code in codes:
            return code
    rank, first = min(failures.items(), key=lambda kv: (kv[1].timestamp, kv[0]))
    how = f"signal {-first.exitcode}" if first.exitcode < 0 else f"status {first.exitcode}"
    print(f"kit: error: training process {rank} ended with {how}", file=sys.stderr)
    return 1
