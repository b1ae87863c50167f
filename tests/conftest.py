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
        pytest.skip("KIT_TEST_NO_SLURM=1: local Slurm test cluster disabled")
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
