"""kit.slurm: parsing helpers, and the real local Slurm cluster (tests/cluster/) mimicking Quest + KLC."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kit import slurm
from kit.errors import KitError
from kit.slurm import (
    expand_hostlist,
    format_minutes,
    parse_gres,
    parse_kv_line,
    parse_nodes,
    parse_partitions,
    parse_time_limit,
)

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


# --- time limits (no cluster) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("2-00:00:00", 2880),
        ("7-00:00:00", 10080),
        ("04:00:00", 240),
        ("4:00:00", 240),  # sinfo/scontrol drop the leading zero
        ("00:30:00", 30),
        ("30", 30),  # plain minutes
        ("90", 90),
        ("0", 0),
        ("30:30", 31),  # MM:SS, seconds round up like Slurm (sbatch -t 30:30 -> 00:31:00)
        ("0:01", 1),
        ("05:00", 5),
        ("1:00:90", 62),  # Slurm does not normalise: 1 h + 0 min + 90 s -> 01:02:00
        ("1-2", 1560),  # D-HH
        ("1-2:30", 1590),  # D-HH:MM
        ("1-02:30:01", 1591),
        (" 2-00:00:00 ", 2880),
        ("UNLIMITED", None),
        ("INFINITE", None),
        ("unlimited", None),
        ("-1", None),
    ],
)
def test_parse_time_limit(text, minutes):
    assert parse_time_limit(text) == minutes


@pytest.mark.parametrize("text", ["", "abc", "1:2:3:4", "1-", "-5", "1.5", "2-00:00:00x", "NONE", "1-2-3", "1:", ":30"])
def test_parse_time_limit_rejects(text):
    with pytest.raises(KitError, match="invalid Slurm time limit"):
        parse_time_limit(text)


@pytest.mark.parametrize(
    ("minutes", "text"),
    [(0, "00:00:00"), (1, "00:01:00"), (59, "00:59:00"), (240, "04:00:00"), (1439, "23:59:00"),
     (1440, "1-00:00:00"), (2880, "2-00:00:00"), (1591, "1-02:31:00"), (10080, "7-00:00:00"), (None, "UNLIMITED")],
)
def test_format_minutes(minutes, text):
    assert format_minutes(minutes) == text
    assert parse_time_limit(text) == minutes  # round trip


@pytest.mark.parametrize("bad", [-1, 1.5, "60", True])
def test_format_minutes_rejects(bad):
    with pytest.raises(ValueError):
        format_minutes(bad)


# --- hostlists, key=value lines, GRES (no cluster) ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("qgpu[2001-2003,3005]", ["qgpu2001", "qgpu2002", "qgpu2003", "qgpu3005"]),
        ("qnode0001", ["qnode0001"]),
        ("kcpu01,kgpu[01-03]", ["kcpu01", "kgpu01", "kgpu02", "kgpu03"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("n[009-011]", ["n009", "n010", "n011"]),
        ("n[01-2]", ["n01", "n02"]),  # padding follows the lower bound
        ("n[3,1-2]", ["n3", "n1", "n2"]),  # order kept
        ("a[1-2]b[3-4]", ["a1b3", "a1b4", "a2b3", "a2b4"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
        ("", []),
        ("(null)", []),
    ],
)
def test_expand_hostlist(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text", ["n[2-1]", "n[a-b]", "n[1-2", "n1]", "n[]"])
def test_expand_hostlist_rejects(text):
    with pytest.raises(KitError, match="invalid hostlist"):
        expand_hostlist(text)


def test_parse_kv_line_values_with_spaces():
    line = (
        "NodeName=qgpu3021 Arch=x86_64 CoresPerSocket=32  CPUAlloc=0 CPUTot=64 "
        "AvailableFeatures=sxm,rhel8 ActiveFeatures=sxm,rhel8 Gres=gpu:h100:4(S:0-1) "
        "OS=Linux 4.18.0-553.el8_10.x86_64 #1 SMP Fri May 10 15:19:13 EDT 2024  RealMemory=1000000 "
        "State=IDLE+DRAIN Partitions=gengpu,gengpu-long Reason=bad gpu 3 [root@2026-01-02T03:04:05]"
    )
    kv = parse_kv_line(line)
    assert kv["OS"] == "Linux 4.18.0-553.el8_10.x86_64 #1 SMP Fri May 10 15:19:13 EDT 2024"
    assert kv["RealMemory"] == "1000000"
    assert kv["Reason"] == "bad gpu 3 [root@2026-01-02T03:04:05]"
    node = parse_nodes(line)["qgpu3021"]
    assert node.gres == {"h100": 4}
    assert node.features == {"sxm", "rhel8"}
    assert node.partitions == ["gengpu", "gengpu-long"]
    assert (node.cpus, node.real_memory_mb, node.state) == (64, 1000000, "IDLE+DRAIN")


@pytest.mark.parametrize(
    ("text", "gres"),
    [
        ("gpu:a100:4", {"a100": 4}),
        ("gpu:a100:4(S:0-1)", {"a100": 4}),
        ("gpu:a100:2(S:0,1),gpu:h100:4(S:1)", {"a100": 2, "h100": 4}),
        ("gpu:4", {"": 4}),
        ("gpu", {"": 1}),
        ("gpu:a100:2,mps:200,shard:8", {"a100": 2}),
        ("(null)", {}),
        (None, {}),
    ],
)
def test_parse_gres(text, gres):
    assert parse_gres(text) == gres


def test_parse_partitions_canned_line():
    line = (
        "PartitionName=gengpu AllowGroups=ALL AllowAccounts=ALL Default=NO DefaultTime=01:00:00 "
        "MaxNodes=UNLIMITED MaxTime=2-00:00:00 Nodes=qgpu[2001-2002,3001] State=UP TotalCPUs=180\n"
        "PartitionName=debug Default=YES DefaultTime=NONE MaxTime=UNLIMITED Nodes=(null) State=DOWN\n"
    )
    parts = parse_partitions(line)
    g = parts["gengpu"]
    assert (g.max_time_minutes, g.default_time_minutes, g.is_default, g.state) == (2880, 60, False, "UP")
    assert g.nodes == ["qgpu2001", "qgpu2002", "qgpu3001"]
    d = parts["debug"]
    assert (d.max_time_minutes, d.default_time_minutes, d.is_default, d.nodes, d.state) == (None, None, True, [], "DOWN")


# --- require() / run() -------------------------------------------------------------------------


def test_require_missing_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KitError) as exc:
        slurm.require("sinfo")
    msg = str(exc.value)
    assert msg == (
        "Slurm command 'sinfo' not found on PATH: run kit on a cluster login node, "
        "or load the site's Slurm module"
    )
    assert "\n" not in msg


def test_run_without_slurm_on_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KitError, match="Slurm command 'scontrol' not found on PATH"):
        slurm.run(["scontrol", "show", "partition", "-o"])


def test_run_timeout(monkeypatch, tmp_path):
    fake = tmp_path / "squeue"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    t0 = time.monotonic()
    with pytest.raises(KitError, match=r"Slurm command 'squeue --json' did not answer within 0.5 s"):
        slurm.run(["squeue", "--json"], timeout=0.5)
    assert time.monotonic() - t0 < 10


def test_run_error_is_one_line(monkeypatch, tmp_path):
    fake = tmp_path / "sbatch"
    fake.write_text(
        "#!/bin/sh\necho 'sbatch: error: invalid partition specified: nosuch' >&2\n"
        "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(KitError) as exc:
        slurm.run(["sbatch", "-p", "nosuch", "job.sh"])
    assert str(exc.value) == (
        "Slurm command 'sbatch -p nosuch job.sh' failed (exit 1): "
        "sbatch: error: invalid partition specified: nosuch; "
        "sbatch: error: Batch job submission failed: Invalid partition name specified"
    )


# --- the real local cluster --------------------------------------------------------------------


def _wait_job(job_id: str, timeout: float = 60) -> dict[str, str]:
    """Poll `scontrol show job -o` until the job ends (sbatch --wait polls far too slowly)."""
    deadline = time.monotonic() + timeout
    while True:
        kv = parse_kv_line(slurm.run(["scontrol", "show", "job", "-o", job_id]))
        if kv.get("JobState") in TERMINAL:
            return kv
        if time.monotonic() > deadline:
            slurm.run(["scancel", job_id])
            pytest.fail(f"job {job_id} still {kv.get('JobState')} ({kv.get('Reason')}) after {timeout} s")
        time.sleep(0.2)


def _sbatch(tmp_path: Path, *opts: str) -> tuple[str, Path]:
    out = tmp_path / "job-%j.out"
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        'echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"\n'
        'echo "SLURMD_NODENAME=$SLURMD_NODENAME"\n'
        'echo "SLURM_JOB_PARTITION=$SLURM_JOB_PARTITION"\n'
    )
    job_id = slurm.run(["sbatch", "--parsable", "-t", "5", "-o", str(out), *opts, str(script)]).strip().split(";")[0]
    assert job_id.isdigit(), job_id
    return job_id, Path(str(out).replace("%j", job_id))


def _job_env(out: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)


@pytest.mark.slurm
def test_partitions_and_max_times(slurm_cluster):
    parts = slurm_cluster.partitions
    assert {n: p.max_time_minutes for n, p in parts.items()} == {
        "short": 240,
        "normal": 2880,
        "long": 10080,
        "genhimem": 2880,
        "gengpu": 2880,
        "gengpu-long": 10080,
        "kellogg": 2880,
    }
    assert slurm_cluster.default_partition.name == "short"
    assert [n for n, p in parts.items() if p.is_default] == ["short"]
    assert all(p.state == "UP" and p.default_time_minutes is None for p in parts.values())
    assert parts["gengpu"].nodes == ["qgpu2001", "qgpu2002", "qgpu3001"]
    assert parts["gengpu-long"].nodes == parts["gengpu"].nodes
    assert parts["kellogg"].nodes == ["kcpu01", "kgpu01", "kgpu02", "kgpu03"]
    assert parts["short"].nodes == parts["normal"].nodes == parts["long"].nodes == ["qnode0001"]
    assert parts["genhimem"].nodes == ["qhimem0001"]


@pytest.mark.slurm
def test_nodes_gres_features_and_sizes(slurm_cluster):
    nodes = slurm_cluster.nodes
    expect = {  # name: (gres, features, cpus, MB)
        "qgpu2001": ({"a100": 2}, {"pcie"}, 52, 192000),
        "qgpu2002": ({"a100": 4}, {"sxm"}, 64, 1000000),
        "qgpu3001": ({"h100": 4}, {"sxm"}, 64, 1000000),
        "qnode0001": ({}, set(), 52, 192000),
        "qhimem0001": ({}, set(), 64, 1500000),
        "kgpu01": ({"l40s": 2}, set(), 64, 512000),
        "kgpu02": ({"a100": 1}, set(), 64, 2000000),
        "kgpu03": ({"h100": 4}, set(), 64, 1000000),
        "kcpu01": ({}, set(), 64, 2000000),
    }
    assert set(nodes) == set(expect)
    for name, (gres, features, cpus, mem) in expect.items():
        n = nodes[name]
        assert (n.gres, n.features, n.active_features, n.cpus, n.real_memory_mb) == (gres, features, features, cpus, mem), name
        assert n.state.split("+")[0] in {"IDLE", "MIXED", "ALLOCATED", "COMPLETING"}, (name, n.state)
    assert nodes["qgpu3001"].partitions == ["gengpu", "gengpu-long"]
    assert nodes["qnode0001"].partitions == ["short", "normal", "long"]
    assert nodes["kgpu03"].partitions == ["kellogg"]
    # Quest's 80 GB tier is --constraint=sxm: A100-SXM and H100
    sxm = sorted(n.name for n in slurm_cluster.partition_nodes("gengpu") if "sxm" in n.features)
    assert sxm == ["qgpu2002", "qgpu3001"]
    assert sum(n.gpus for n in slurm_cluster.partition_nodes("kellogg")) == 7
    with pytest.raises(KitError, match="partition 'nosuch' does not exist.*gengpu"):
        slurm_cluster.partition_nodes("nosuch")


@pytest.mark.slurm
@pytest.mark.parametrize(
    "text",
    ["qgpu[2001-2003,3005]", "n[01-10]", "n[009-011]", "n[01-2]", "n[3,1-2]", "x,y[9-11],z",
     "a[1-2]b[3-4]", "rack[1-2]-n[1-2]", "kcpu01,kgpu[01-03]"],
)
def test_expand_hostlist_matches_scontrol(slurm_cluster, text):
    assert expand_hostlist(text) == slurm.run(["scontrol", "show", "hostnames", text]).split()


@pytest.mark.slurm
def test_gpu_job_runs_with_cuda_visible_devices(slurm_cluster, tmp_path):
    job_id, out = _sbatch(tmp_path, "-p", "gengpu", "--gres=gpu:h100:2", "--constraint=sxm")
    kv = _wait_job(job_id)
    assert kv["JobState"] == "COMPLETED", kv
    assert kv["ExitCode"] == "0:0"
    assert kv["NodeList"] == "qgpu3001"
    assert kv["TresPerNode"] == "gres:gpu:h100:2"
    env = _job_env(out)
    assert len(env["CUDA_VISIBLE_DEVICES"].split(",")) == 2, env
    assert env["SLURMD_NODENAME"] == "qgpu3001"
    assert env["SLURM_JOB_PARTITION"] == "gengpu"


# Which tier a request lands on. All jobs are submitted at once (module fixture) and run side by
# side, so the whole table costs about one scheduling cycle.
TIER_JOBS = {
    "quest-pcie-a100": (("-p", "gengpu", "--gres=gpu:a100:1", "--constraint=pcie"), "qgpu2001", 1),
    "quest-sxm-a100": (("-p", "gengpu", "--gres=gpu:a100:4", "--constraint=sxm"), "qgpu2002", 4),
    "quest-long-h100": (("-p", "gengpu-long", "--gres=gpu:h100:1", "-t", "5-00:00:00"), "qgpu3001", 1),
    "klc-l40s": (("-p", "kellogg", "--gres=gpu:l40s:2"), "kgpu01", 2),
    "klc-a100": (("-p", "kellogg", "--gres=gpu:a100:1"), "kgpu02", 1),
    "klc-h100": (("-p", "kellogg", "--gres=gpu:h100:4", "--mem=900G"), "kgpu03", 4),
    "quest-default-cpu": ((), "qnode0001", 0),  # default partition short, no GPUs
    "quest-himem": (("-p", "genhimem", "--mem=1000G"), "qhimem0001", 0),
}


@pytest.fixture(scope="module")
def tier_jobs(slurm_cluster, tmp_path_factory):
    jobs = {}
    for key, (opts, _node, _ngpus) in TIER_JOBS.items():
        jobs[key] = _sbatch(tmp_path_factory.mktemp(key), *opts)
    return jobs


@pytest.mark.slurm
@pytest.mark.parametrize("key", list(TIER_JOBS))
def test_jobs_land_on_the_right_tier(tier_jobs, key):
    _opts, node, ngpus = TIER_JOBS[key]
    job_id, out = tier_jobs[key]
    kv = _wait_job(job_id)
    assert kv["JobState"] == "COMPLETED", kv
    assert kv["NodeList"] == node
    env = _job_env(out)
    assert env["SLURMD_NODENAME"] == node
    if ngpus:
        assert len(env["CUDA_VISIBLE_DEVICES"].split(",")) == ngpus, env
    else:
        assert env["CUDA_VISIBLE_DEVICES"] == "unset"


@pytest.mark.slurm
@pytest.mark.parametrize(
    ("opts", "error"),
    [
        (("-p", "gengpu", "--gres=gpu:1", "-t", "2-00:01:00"), "Requested time limit is invalid"),
        (("-p", "short", "-t", "4:00:01"), "Requested time limit is invalid"),
        (("-p", "kellogg", "--gres=gpu:a100:2"), "Requested node configuration is not available"),
        (("-p", "gengpu", "--gres=gpu:h100:2", "--constraint=pcie"), "Requested node configuration is not available"),
        (("-p", "gengpu", "--gres=gpu:l40s:1"), "Requested node configuration is not available"),
        (("-p", "gengpu-long", "--gres=gpu:4", "--constraint=pcie"), "Requested node configuration is not available"),
        (("-p", "gengpu", "--gres=gpu:a100:1", "--cpus-per-task=65"), "Requested node configuration is not available"),
        (("-p", "nosuch"), "Invalid partition name specified"),
    ],
)
def test_over_limit_rejected_at_submit(slurm_cluster, tmp_path, opts, error):
    with pytest.raises(KitError, match=error) as exc:
        _sbatch(tmp_path, *opts)
    assert str(exc.value).startswith("Slurm command 'sbatch --parsable")
    assert "\n" not in str(exc.value)


@pytest.mark.slurm
def test_run_reports_slurm_error_line(slurm_cluster):
    with pytest.raises(KitError) as exc:
        slurm.run(["scontrol", "show", "job", "999999999"])
    assert str(exc.value) == (
        "Slurm command 'scontrol show job 999999999' failed (exit 1): "
        "slurm_load_jobs error: Invalid job id specified"
    )


@pytest.mark.slurm
def test_kill_wait_leaves_the_serving_jobs_their_stop_grace(slurm_cluster):
    """scancel sends SIGTERM, then SIGKILL after KillWait: the serving template stops its engine
    within STOP_GRACE_S and must still have time to record that it stopped."""
    from kit.jobs.serve import STOP_GRACE_S

    lines = slurm.run(["scontrol", "show", "config"]).splitlines()
    config = {key.strip(): value.strip() for key, value in (line.split("=", 1) for line in lines if "=" in line)}
    kill_wait = int(config["KillWait"].split()[0])  # "30 sec"
    assert kill_wait >= STOP_GRACE_S + 5, f"KillWait={kill_wait} s leaves no room after the {STOP_GRACE_S} s stop grace"
