"""Running Slurm's commands (stdlib only): submit, cancel, and the state of one job.

Everything goes through the commands a login node offers (`sbatch`, `scontrol`, `sacct`,
`scancel`); every failure becomes one KitError carrying Slurm's own error line.
"""

from __future__ import annotations

import shutil
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

    @property
    def ended(self) -> bool:
        """Finished, or forgotten by Slurm (it forgets a job only after it ended)."""
        return self.finished or self.state == "UNKNOWN"


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
        reason = none_if_null(kv.get("Reason"))
        return JobState(str(job_id), kv.get("JobState", "UNKNOWN"), None if reason == "None" else reason,
                        none_if_null(kv.get("NodeList")), kv.get("ExitCode"), "scontrol")
    if accounting and shutil.which("sacct"):
        rc, out, _ = _try(["sacct", "-X", "-n", "-P", "-j", str(job_id), "-o", "State,ExitCode,NodeList"])
        line = out.strip().splitlines()[0] if rc == 0 and out.strip() else ""
        if line:
            state, code, nodes = (line.split("|") + ["", "", ""])[:3]
            return JobState(str(job_id), state, None, nodes or None, code or None, "sacct")
    return JobState(str(job_id), "UNKNOWN", "Slurm no longer knows this job", source="none")


def cancel(job_id: str) -> None:
    run(["scancel", str(job_id)])
