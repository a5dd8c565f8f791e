"""`owc simulate` from any directory: the default engine profile ships with the package, the
report is written, a model that can have only one replica is warned about, and the output
keeps one line per policy (exactly one `owc` row) with the utilisation line added."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from cluster.capacity import traces
from cluster.capacity.simulator import EngineProfile, TraceRequest

REPO = Path(__file__).resolve().parents[2]
PACKAGED = REPO / "cluster" / "capacity" / "engine-profile.json"
ROW = re.compile(r"^\s*(\S+): +[\d.]+% within 1s TTFT, +[\d.]+ replica-h, \d+ scale events, peak \d+$")


def owc(*args: str, cwd: Path) -> tuple[int, str]:
    exe = Path(sys.executable).with_name("owc")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cluster.cli"]
    r = subprocess.run([*cmd, "simulate", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout + r.stderr  # the console writes to stderr


def test_from_a_temporary_directory_with_the_packaged_profile(tmp_path):
    trace = tmp_path / "t.jsonl"
    traces.write(trace, [TraceRequest(i / 2, 100, 20) for i in range(60)])
    rc, text = owc("--trace", str(trace), "--keda-thresholds", "2", cwd=tmp_path)
    assert rc == 0, text
    report = json.loads((tmp_path / "simulation" / "t.json").read_text())
    assert Path(report["profile"]).resolve() == PACKAGED and len(report["sha256_16"]) == 16
    assert "warning" in text and "only 1 replica" in text  # the embedded default: replicas.max 1
    rows = [m.group(1) for line in text.splitlines() if (m := ROW.match(line))]
    assert rows.count("owc") == 1 and len(rows) == 3
    assert any(line.startswith("utilisation") for line in text.splitlines())


def test_no_warning_with_replicas_to_scale_and_a_batch_backlog(tmp_path):
    trace, batch, cfg = tmp_path / "t.jsonl", tmp_path / "b.jsonl", tmp_path / "owc.yaml"
    traces.write(trace, [TraceRequest(i / 20, 100, 20) for i in range(1200)])
    traces.write(batch, [TraceRequest(0.0, 100, 50) for _ in range(500)])
    cfg.write_text("models:\n  m:\n    source: demo:tiny-llama\n    replicas: {min: 1, max: 4}\n")
    rc, text = owc("--trace", str(trace), "--batch", str(batch), "--config", str(cfg), "--keda-thresholds", "2",
                   "--out", "out", cwd=tmp_path)
    assert rc == 0, text
    assert "warning" not in text and "batch lines done: owc 500/500" in text
    report = json.loads((tmp_path / "out" / "t.json").read_text())
    assert report["batch"]["lines"] == 500 and report["results"][0]["batch_done"] == 500


def test_the_packaged_profile_is_the_committed_measurement():
    assert EngineProfile.load(PACKAGED) == EngineProfile.load(REPO / "loadtests" / "results" / "engine-profile.json")
    assert '"capacity/engine-profile.json"' in (REPO / "pyproject.toml").read_text()
