"""Gateway processes that come and go under load on a real local Ray (loadtests.gateway_faults,
the fake engine: this is about the gateways): the gateway policy scales `owc-gateway` up on
a wave of streams and back down with >= 10 s streams in flight, none cut and no request
failed; one of the default two gateway processes SIGKILLed under load fails no request
beyond its one retried connection, and Serve restores the second process. Each scenario runs
its own Ray in a child process (the session cluster's is left alone)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_gateways_scale_and_survive_a_sigkill_without_failing_a_request(tmp_path):
    out = tmp_path / "gateway-faults.json"
    subprocess.run([sys.executable, "-m", "loadtests.gateway_faults", "--engine", "fake", "--out", str(out)],
                   cwd=REPO, check=True, timeout=600)
    doc = json.loads(out.read_text())
    ramp, kill = doc["ramp"], doc["sigkill"]
    assert [(d["from"], d["to"]) for d in ramp["decisions"]][:2] == [(1, 2), (2, 1)], ramp["decisions"]
    assert ramp["streams_in_flight_at_scale_down"] >= 1, ramp
    assert ramp["streams"]["cut"] == 0 and ramp["streams"]["ok"] == 21, ramp
    assert ramp["requests"]["failed"] == 0 and ramp["requests"]["ok"] > 0, ramp
    assert kill["requests"]["failed"] == 0 and kill["requests"]["ok"] > kill["before_kill"]["ok"], kill
    assert kill["seconds_to_two_processes"] < 120, kill
