"""The fault suite: each scenario under steady load (loadtests.fault_load), one record per
scenario in a faults file. `make test` runs the CI subset (engine SIGKILL, gateway SIGKILL,
scale-downs under load, the 60 s soak) and writes its records to a temporary file; `make
faults` runs every scenario and writes the committed `loadtests/results/faults.json`
(`OWC_FAULTS_OUT`); `make soak` the 30-minute soak (`OWC_SOAK_S`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FULL = os.environ.get("OWC_FAULTS") == "full"
# A scenario only the full run (`make faults`) takes; CI runs the subset.
full_only = pytest.mark.skipif(not FULL, reason="full fault suite only (make faults)")


@pytest.fixture(scope="session")
def faults_out(tmp_path_factory) -> Path:
    """Where this run's scenario records go (loadtests.fault_load.write)."""
    env = os.environ.get("OWC_FAULTS_OUT")
    return Path(env) if env else tmp_path_factory.mktemp("faults") / "faults.json"
