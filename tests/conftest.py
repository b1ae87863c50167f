"""Shared pytest fixtures for the kit test suite."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent


# --- local Slurm test cluster ----------------------------------------------------------------
# tests/cluster/slurm-up.sh installs (Debian packages), configures and starts a local Slurm
# 22.05 that mimics Quest and KLC (tests/cluster/cluster.conf, gres.conf). It is fast (<1 s)
# when the cluster is already up. The cluster is left running at the end of the session
# (CI stops it with slurm-down.sh; developers re-use it).

SLURM_UP = TESTS_DIR / "cluster" / "slurm-up.sh"
SLURM_UP_TIMEOUT_S = 900  # a first run may apt-get install the packages


@pytest.fixture(scope="session")
def slurm_cluster():
    """The running local test cluster as `kit.slurm.Cluster`; fails if Slurm cannot start.

    Set KIT_TEST_NO_SLURM=1 to skip the tests that need it instead.
    """
    if os.environ.get("KIT_TEST_NO_SLURM") == "1":
        pytest.skip(reason="KIT_TEST_NO_SLURM=1: local Slurm test cluster disabled")
    try:
        proc = subprocess.run(
            ["bash", str(SLURM_UP)],
            capture_output=True,
            text=True,
            timeout=SLURM_UP_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        pytest.fail(
            f"{SLURM_UP} did not finish within {SLURM_UP_TIMEOUT_S} s:\n{err or ''}", pytrace=False
        )
    if proc.returncode != 0:
        pytest.fail(
            f"{SLURM_UP} failed (exit {proc.returncode}); set KIT_TEST_NO_SLURM=1 to skip the "
            f"Slurm tests.\n{proc.stderr.strip() or proc.stdout.strip()}",
            pytrace=False,
        )
    from kit.slurm import query_cluster

    return query_cluster()


# --- isolation from the developer's own configs and caches ------------------------------------
# Every test (and every `kit` subprocess it starts, which inherits os.environ) sees empty user
# and site-wide config dirs, its own HF cache, and no Hub: a test that needs the Hub stand-in
# sets HF_ENDPOINT and clears HF_HUB_OFFLINE itself.

@pytest.fixture(autouse=True)
def isolated_kit_env(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.mktemp("kit-env")
    for name in ("xdg", "etc-kit", "hf", "state"):
        (base / name).mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(base / "xdg"))
    monkeypatch.setenv("KIT_SYSTEM_CONFIG_DIR", str(base / "etc-kit"))
    monkeypatch.setenv("HF_HOME", str(base / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(base / "hf" / "hub"))
    monkeypatch.setenv("KIT_STATE_DIR", str(base / "state"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    for name in ("KIT_SITE", "KIT_ACCOUNT", "HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    return base
