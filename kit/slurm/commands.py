"""Running Slurm's commands (stdlib only): submit, cancel, and the state of jobs.

Everything goes through the commands a login node offers (`sbatch`, `squeue`, `scontrol`,
`sacct`, `scancel`); every failure becomes one KitError carrying Slurm's own error line. Job
state comes from one `squeue` call for many jobs (`queue_states`), `sacct` for the ones squeue
no longer lists where the site has accounting, and `scontrol` for one job as the last resort;
`kit.jobs.watch` decides when to ask.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass

from kit.errors import KitError
from kit.slurm.parse import none_if_null, parse_kv_line

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


# --- jobs ----------------------------------------------------------------------------------

# Slurm states after which a job holds nothing and never runs again.
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "REVOKED"}
# States of a job that will run again: Slurm is requeueing it (REQUEUE_HOLD and SPECIAL_EXIT wait
# for `scontrol release`).
RUNS_AGAIN = {"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT"}
# Ends that Slurm turns into a requeue for a job submitted with --requeue (sbatch(1): "after node
# failure, or upon preemption").
REQUEUED_IF_ASKED = {"PREEMPTED", "NODE_FAIL"}


@dataclass
class JobState:
    job_id: str
    state: str  # PENDING, RUNNING, COMPLETED, ... or UNKNOWN
    reason: str | None = None
    nodes: str | None = None
    exit_code: str | None = None
    source: str = "squeue"
    requeue: bool = False  # submitted with --requeue: a preempted or node-failed job runs again

    @property
    def finished(self) -> bool:
        """Ended for good: a job that Slurm requeues (or will, being preempted with --requeue) is not."""
        base = self.state.split()[0] if self.state else "UNKNOWN"
        if base in REQUEUED_IF_ASKED and self.requeue:
            return False
        return base in FINISHED

    @property
    def ended(self) -> bool:
        """Finished, or forgotten by Slurm (it forgets a job only after it ended)."""
        return self.finished or self.state == "UNKNOWN"

    @property
    def runs_again(self) -> bool:
        base = self.state.split()[0] if self.state else "UNKNOWN"
        return base in RUNS_AGAIN or (base in REQUEUED_IF_ASKED and self.requeue)


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


# --- submitting ----------------------------------------------------------------------------

SBATCH_TIMEOUT_S = 60
SBATCH_GRACE_S = 2  # after Ctrl-C or SIGTERM: how long sbatch may still take to say what it queued


class SubmitUncertain(KitError):
    """sbatch did not answer: the job may or may not be queued."""


class SubmitInterrupted(KitError):
    """Ctrl-C or SIGTERM while sbatch ran. ``job_id`` is what sbatch queued if it still said so
    in time, else None: the job may or may not be queued (ask `queued_jobs`)."""

    exit_code = 130

    def __init__(self, job_id: str | None):
        super().__init__("interrupted during sbatch")
        self.job_id = job_id


def _stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


def submit(script: str, *, cwd: str, env: dict[str, str] | None = None, test_only: bool = False) -> str:
    """sbatch a script file; return the job id (or sbatch's --test-only answer).

    sbatch runs in its own process group, so a Ctrl-C at the terminal reaches kit, not sbatch
    halfway through its request: kit then gives sbatch SBATCH_GRACE_S to answer and raises
    SubmitInterrupted with the job id it printed (None when it did not answer in time)."""
    args = ["sbatch", "--test-only", script] if test_only else ["sbatch", "--parsable", script]
    path = require("sbatch")
    proc = subprocess.Popen([path, *args[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=SBATCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        raise SubmitUncertain(f"sbatch did not answer within {SBATCH_TIMEOUT_S} s: the job may be queued anyway; "
                              f"check `squeue --me` before submitting again (record: {cwd})") from None
    except BaseException:  # KeyboardInterrupt, or SIGTERM turned into an exception by the caller
        job_id = None
        try:
            out, _ = proc.communicate(timeout=SBATCH_GRACE_S)
            if proc.returncode == 0 and not test_only:
                job_id = out.strip().split(";")[0] or None
        except BaseException:  # no answer in time, or interrupted again: stop waiting
            pass
        finally:
            _stop_group(proc)
        raise SubmitInterrupted(job_id) from None
    if proc.returncode != 0:
        raise KitError(f"sbatch refused the job: {_error_line(err, out)}")
    if test_only:
        return (err or out).strip()
    return out.strip().split(";")[0]


def queued_jobs(name: str, workdir: str) -> list[str]:
    """Ids of this user's jobs named ``name`` that were submitted from ``workdir`` (every state
    Slurm still knows); a KitError when Slurm cannot be asked."""
    out = run(["squeue", "--me", "-h", "-t", "all", "-n", name, "-O", "JobID:|,WorkDir:|"])
    ids = []
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) >= 2 and fields[1] == workdir and fields[0].strip().isdigit():
            ids.append(fields[0].strip())
    return ids


# --- job state -----------------------------------------------------------------------------

_QUEUE_FORMAT = "JobID:|,State:|,Reason:|,NodeList:|,exit_code:|"


def _exit_code(raw: str) -> str | None:
    """squeue's exit_code is the raw wait status (768); scontrol and sacct say EXIT:SIGNAL (3:0)."""
    raw = raw.strip()
    if not raw.isdigit():
        return none_if_null(raw)
    status = int(raw)
    return f"{status >> 8}:{status & 0x7F}"


def parse_queue(text: str) -> dict[str, JobState]:
    """Parse `squeue -h -O JobID:|,State:|,Reason:|,NodeList:|,exit_code:|` lines."""
    states: dict[str, JobState] = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 5 or not fields[0].strip():
            continue
        job_id, state, reason, nodes, code = (f.strip() for f in fields[:5])
        reason = none_if_null(reason)
        states[job_id] = JobState(job_id, state or "UNKNOWN", None if reason == "None" else reason,
                                  none_if_null(nodes), _exit_code(code), "squeue")
    return states


def queue_states(job_ids: list[str]) -> dict[str, JobState]:
    """One `squeue` call for all ``job_ids``, in every state Slurm still keeps (finished jobs stay
    for MinJobAge); the jobs it no longer knows are left out."""
    if not job_ids:
        return {}
    rc, out, err = _try(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-O", _QUEUE_FORMAT])
    if rc != 0:
        if "Invalid job id" in (err + out):  # squeue says so when it knows none of them
            return {}
        raise KitError(f"squeue failed: {_error_line(err, out)}")
    return {job_id: st for job_id, st in parse_queue(out).items() if job_id in job_ids}


def accounting_states(job_ids: list[str]) -> dict[str, JobState]:
    """One `sacct` call for all ``job_ids`` (sites with accounting): each job's latest run."""
    if not job_ids or not shutil.which("sacct"):
        return {}
    rc, out, _ = _try(["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", "JobIDRaw,State,ExitCode,NodeList"])
    states: dict[str, JobState] = {}
    for line in out.splitlines() if rc == 0 else []:
        job_id, state, code, nodes = (line.split("|") + ["", "", "", ""])[:4]
        if job_id in job_ids and state:
            states[job_id] = JobState(job_id, state, None, none_if_null(nodes), code or None, "sacct")
    return states


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


def job_state(job_id: str) -> JobState:
    """One job's state from `scontrol show job` (the fallback for a job squeue no longer lists);
    UNKNOWN when Slurm has forgotten the job."""
    out = _scontrol_job(job_id)
    if out is not None:
        kv = parse_kv_line(out.splitlines()[0])
        reason = none_if_null(kv.get("Reason"))
        return JobState(str(job_id), kv.get("JobState", "UNKNOWN"), None if reason == "None" else reason,
                        none_if_null(kv.get("NodeList")), kv.get("ExitCode"), "scontrol")
    return JobState(str(job_id), "UNKNOWN", "Slurm no longer knows this job", source="none")


def cancel(job_id: str) -> bool:
    """scancel; False when Slurm says the job has already ended (nothing left to cancel)."""
    rc, out, err = _try(["scancel", str(job_id)])
    if rc == 0:
        return True
    if re.search(r"already completing or completed|Invalid job id", err + out):
        return False
    raise KitError(f"Slurm command 'scancel {job_id}' failed (exit {rc}): {_error_line(err, out)}")
