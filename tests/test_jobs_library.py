"""The job library keeps the guarantees itself, not the CLI: a Python caller of submit gets the
lock check, and following a log never drops the lines a job writes as it ends."""

from __future__ import annotations

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
