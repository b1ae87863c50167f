"""The job library keeps the guarantees itself, not the CLI: a Python caller of submit gets the
lock check, following a log never drops the lines a job writes as it ends, and the one watcher
asks Slurm about all jobs at once, backs off, and knows that a requeued job is not finished."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from kit.errors import KitError
from kit.jobs.record import JobRecord
from kit.slurm import JobState
from standin.site import standin_site


@pytest.fixture
def standin_env(tmp_path, monkeypatch, slurm_cluster):
    setup = standin_site(tmp_path)
    for key, value in setup["env"].items():
        monkeypatch.setenv(key, value)
    return setup


def test_a_python_caller_of_submit_gets_the_lock_check(standin_env):
    from kit.jobs.serve import serve_job
    from kit.jobs.submit import submit

    job = serve_job(str(standin_env["model"]), site="quest", account=None, engine="tgi", name="library-caller")
    (standin_env["images"] / "tgi-3.3.7.sif").write_text("#!kit-standin runscript=something-else\n")
    with pytest.raises(KitError, match="does not match"):
        submit(job)
    assert not job.job_dir.exists()  # nothing written, nothing queued


def test_a_python_caller_of_submit_gets_a_record_without_secrets(standin_env, monkeypatch):
    from kit.jobs.serve import serve_job
    from kit.jobs.submit import submission_env

    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    job = serve_job(str(standin_env["model"]), site="quest", account=None, engine="vllm", name="library-secrets")
    assert "HF_TOKEN" not in submission_env() and "hf_secret_value" not in job.script
    assert job.record["image_name"] == "vllm" and job.record["job_id"] is None


def test_following_a_log_keeps_the_lines_written_as_the_job_ends(tmp_path, monkeypatch):
    """The end is seen first, then the log is read once more: a line written between a read and
    the moment Slurm reports the job ended is still printed."""
    from kit.jobs import logs

    record = JobRecord(tmp_path, {"name": "ending", "job_id": "42"})
    record.log_path.write_text("first\n")
    polls = []

    def state_now(rec):
        polls.append(1)
        if len(polls) == 1:
            return JobState("42", "RUNNING")
        with rec.log_path.open("a") as f:  # the job's last words, as it ends
            f.write("last words\n")
        return JobState("42", "COMPLETED")

    monkeypatch.setattr("kit.jobs.watch.job_state", state_now)
    out: list[str] = []
    logs.show(record, out.append, follow=True, interval=0)
    assert "".join(out) == "first\nlast words\n"


def test_tail_returns_where_the_lines_it_read_end(tmp_path):
    from kit.jobs import logs

    record = JobRecord(tmp_path, {"name": "t", "job_id": "7"})
    record.log_path.write_bytes(b"a\nb\nc\n")
    lines, offset = logs.tail(record, 2)
    assert lines == ["b", "c"] and offset == 6
    with record.log_path.open("a") as f:
        f.write("d\n")
    assert logs.read_from(record, offset) == ("d\n", 8)


# --- the one watcher of job state ---------------------------------------------------------------


def counting_path(tmp_path: Path, names=("squeue", "scontrol", "sacct", "scancel", "sbatch")) -> tuple[dict, Path]:
    """A PATH that logs every Slurm command kit runs, then runs the real one."""
    bin_dir, log = tmp_path / "counting-bin", tmp_path / "slurm-calls.log"
    bin_dir.mkdir()
    for name in names:
        real = shutil.which(name)
        assert real, name
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexec "{real}" "$@"\n')
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def sbatch_wrap(command: str, *opts: str) -> str:
    from kit import slurm

    return slurm.run(["sbatch", "--parsable", "-p", "short", "-t", "5", "-o", "/dev/null", *opts,
                      "--wrap", command]).strip().split(";")[0]


def squeue_state(job_id: str) -> str:
    from kit import slurm

    return slurm.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"]).strip()


def until_state(job_id: str, wanted: set[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while squeue_state(job_id) not in wanted:
        assert time.monotonic() < deadline, f"job {job_id} still {squeue_state(job_id)}"
        time.sleep(0.2)


def write_record(root: Path, name: str, job_id: str, **extra) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "record.json").write_text(json.dumps(dict(name=name, job_id=job_id, **extra)))


def test_kit_jobs_asks_slurm_once_and_requeued_jobs_are_waited_for(slurm_cluster, isolated_kit_env, tmp_path):
    """Real jobs on the local Slurm: `kit jobs` makes one squeue call for all records (scontrol
    only for a job squeue no longer knows, once: its end is kept in its record); a requeued and
    a requeue-held job are not finished: `kit wait` keeps waiting (backing off, squeue only),
    `kit stop` cancels them."""
    from kit import slurm
    from kitrun import kit

    root = isolated_kit_env / "state" / "jobs"
    requeued = sbatch_wrap("sleep 300", "--requeue")
    held = sbatch_wrap("sleep 300", "--requeue")
    done = sbatch_wrap("true")
    try:
        write_record(root, "requeued", requeued, requeue=True)
        write_record(root, "held", held, requeue=True)
        write_record(root, "done", done)
        write_record(root, "forgotten", "60000000")  # a job Slurm no longer knows
        until_state(requeued, {"RUNNING"})
        until_state(held, {"RUNNING"})
        until_state(done, {"COMPLETED"})

        env, log = counting_path(tmp_path)
        r = kit("jobs", "--json", env=env)
        assert r.code == 0, r.err
        assert {row["name"]: row["state"] for row in r.json()} == {
            "requeued": "RUNNING", "held": "RUNNING", "done": "COMPLETED", "forgotten": "UNKNOWN"}
        assert [c.split()[0] for c in calls(log)] == ["squeue", "scontrol"], calls(log)
        assert "scontrol show job 60000000" in calls(log)[1]
        log.unlink()
        r = kit("jobs", "--json", env=env)  # the ended jobs are not asked about again
        assert r.code == 0 and len(r.json()) == 4, r.err
        assert len(calls(log)) == 1 and calls(log)[0].startswith("squeue ")
        assert sorted(calls(log)[0].split(" -j ")[1].split()[0].split(",")) == sorted([requeued, held])

        slurm.run(["scontrol", "requeue", requeued])
        slurm.run(["scontrol", "requeuehold", held])
        log.unlink()
        r = kit("wait", "requeued", "--timeout", "3", env=env)
        assert r.code == 3 and "not ready after 3 s" in r.err.splitlines()[-1], r.err
        polls = calls(log)
        assert polls and all(c.startswith("squeue ") for c in polls), polls
        assert len(polls) <= 5, polls  # backing off from 0.5 s (polling every 0.5 s makes 7)
        r = kit("wait", "held", "--timeout", "1", env=env)
        last = r.err.splitlines()[-1]
        assert r.code == 3 and "not ready after 1 s" in last and "requeued in held state" in last, r.err

        st = kit("status", "requeued", "--json", env=env).json()
        assert st["state"] == "PENDING" and st["requeue"] is True
        for name, job_id in (("requeued", requeued), ("held", held)):
            r = kit("stop", name, env=env)
            assert r.code == 0 and r.out.strip() == f"job {job_id} ({name}): CANCELLED", r.err
    finally:
        slurm.run(["scancel", requeued, held])


@pytest.mark.parametrize(
    ("state", "requeue", "finished"),
    [("REQUEUED", False, False), ("REQUEUE_HOLD", False, False), ("REQUEUE_FED", False, False),
     ("SPECIAL_EXIT", False, False), ("PREEMPTED", True, False), ("NODE_FAIL", True, False),
     ("PREEMPTED", False, True), ("NODE_FAIL", False, True), ("COMPLETED", True, True),
     ("CANCELLED by 0", True, True), ("TIMEOUT", False, True), ("RUNNING", False, False),
     ("COMPLETING", False, False)],
)
def test_only_jobs_that_will_not_run_again_are_finished(state, requeue, finished):
    st = JobState("5", state, requeue=requeue)
    assert st.finished is finished and st.ended is finished
    assert st.runs_again is (not finished and state not in ("RUNNING", "COMPLETING"))


def test_a_preempted_job_submitted_with_requeue_is_waited_for_and_stopped(tmp_path, monkeypatch):
    """Slurm says PREEMPTED (squeue's own line format): a job submitted with --requeue will run
    again, so `wait` keeps waiting and `stop` cancels it; without --requeue it has ended."""
    from kit.jobs import watch

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text("#!/bin/sh\necho '77|PREEMPTED|None|qnode0001|0|'\n")
    (bin_dir / "scancel").write_text(f"#!/bin/sh\necho \"$*\" >> {tmp_path}/scancel.log\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    for requeue in (True, False):
        monkeypatch.setattr(watch, "WATCHER", watch.Watcher())  # a fresh process's watcher
        job_dir = tmp_path / f"requeue-{requeue}"
        job_dir.mkdir()
        record = JobRecord(job_dir, {"name": "ft", "job_id": "77", "requeue": requeue})
        if requeue:
            with pytest.raises(KitError, match="not ready after 0.3 s") as exc:
                watch.wait(record, timeout=0.3, interval=0.05)
            assert not isinstance(exc.value, watch.JobDied)
            with pytest.raises(KitError, match="still PREEMPTED .* may still run it again"):
                watch.stop(record, timeout=0.3, interval=0.05)
            assert (tmp_path / "scancel.log").read_text().splitlines()[0] == "77"
            assert "slurm_final" not in record.data
        else:
            (tmp_path / "scancel.log").unlink()
            with pytest.raises(watch.JobDied, match="ended before it was ready: PREEMPTED"):
                watch.wait(record, timeout=0.3, interval=0.05)
            assert watch.stop(record).state == "PREEMPTED"
            assert not (tmp_path / "scancel.log").exists()
            assert record.data["slurm_final"]["state"] == "PREEMPTED"


def test_the_watcher_backs_off_and_starts_over_at_a_change(tmp_path, monkeypatch):
    """Slurm is asked at 0, 0.5, 1.25, ... s while nothing changes (up to POLL_MAX_S apart),
    and again POLL_MIN_S after a change."""
    from kit.jobs import watch

    state = tmp_path / "state"
    state.write_text("PENDING")
    (tmp_path / "squeue").write_text(f"#!/bin/sh\necho x >> {tmp_path}/calls\necho \"8|$(cat {state})|None||0|\"\n")
    (tmp_path / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    w = watch.Watcher(min_delay=0.2, max_delay=0.5, growth=2)
    record = JobRecord(tmp_path, {"name": "b", "job_id": "8"})

    def asked() -> int:
        return len((tmp_path / "calls").read_text().splitlines())

    assert w.state(record).state == "PENDING" and asked() == 1 and w.delay == 0.2
    assert w.state(record).state == "PENDING" and asked() == 1  # cached
    for expected_delay in (0.4, 0.5, 0.5):
        time.sleep(w.delay)
        w.state(record)
        assert w.delay == expected_delay
    n = asked()
    state.write_text("RUNNING")
    time.sleep(w.delay)
    assert w.state(record).state == "RUNNING" and asked() == n + 1 and w.delay == 0.2


def test_wait_asks_slurm_at_once_when_the_job_writes_its_endpoint(tmp_path, monkeypatch):
    """However long the poll delay has grown, the job's own endpoint file changing (it started,
    got ready) makes the next look ask Slurm: `kit wait` notices a started engine promptly."""
    from kit.jobs import watch

    (tmp_path / "squeue").write_text(f"#!/bin/sh\necho x >> {tmp_path}/calls\necho '9|RUNNING|None|qgpu2001|0|'\n")
    (tmp_path / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(watch, "WATCHER", watch.Watcher(min_delay=60, max_delay=60))
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    record = JobRecord(job_dir, {"name": "e", "job_id": "9"})
    looks = watch.watch(record, interval=0.01, files=watch.job_files)
    for _ in range(3):
        next(looks)
    assert len((tmp_path / "calls").read_text().splitlines()) == 1  # cached: the delay is 60 s
    (job_dir / "endpoint.json").write_text('{"state": "starting"}')
    next(looks)
    assert len((tmp_path / "calls").read_text().splitlines()) == 2


def test_a_final_state_that_cannot_be_kept_is_no_error(tmp_path):
    """The watcher writes a finished job's state into its record to spare Slurm later; a record it
    cannot write (another user's, a read-only one) just goes without."""
    from kit.jobs.watch import _keep_final

    record = JobRecord(tmp_path / "gone", {"name": "other", "job_id": "9"})  # its directory is not there
    _keep_final(record, JobState("9", "COMPLETED"))
    assert record.data["slurm_final"]["state"] == "COMPLETED" and not (tmp_path / "gone").exists()
