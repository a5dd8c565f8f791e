"""The wheel is the product alone and works outside the checkout: no loadtests/, the
Prometheus config, rules, dashboards and scenarios inside as real files; installed into a
fresh virtualenv, `owc config validate` passes on the embedded default and `owc monitor
--write-config` lays out a Prometheus config and rules that promtool accepts."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.tools import TOOLS_BIN

# Package data the product reads through importlib.resources.
DATA = [
    "cluster/config/default.yaml",
    "cluster/capacity/engine-profile.json",
    "cluster/metrics/prometheus/prometheus.yml",
    "cluster/metrics/prometheus/rules/owc-alerts.yml",
    "cluster/metrics/prometheus/rules/owc-recording.yml",
    *(f"cluster/metrics/grafana/{p.name}" for p in sorted((REPO / "cluster" / "metrics" / "grafana").glob("*.json"))),
    *(f"cluster/bench/scenarios/{p.name}" for p in sorted((REPO / "cluster" / "bench" / "scenarios").glob("*.yaml"))),
]
# The build reads a copy: an in-tree build would leave build/ behind, and a stale build/lib
# could smuggle removed files into the wheel.
IGNORE = shutil.ignore_patterns(".git", ".venv", ".tools", ".cache", ".owc", "build", "dist", "*.egg-info", "__pycache__",
                                ".pytest_cache", "results", "traces")


def _run(argv: list, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, **kw)
    assert r.returncode == 0, f"{argv}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src") / "owc"
    shutil.copytree(REPO, src, symlinks=True, ignore=IGNORE)
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, src])
    (found,) = out.glob("owc-*.whl")
    return found


def test_the_wheel_holds_the_product_and_its_data_as_files(wheel):
    with zipfile.ZipFile(wheel) as z:
        infos = {i.filename: i for i in z.infolist()}
        tops = {name.split("/")[0] for name in infos}
        assert not any(t == "loadtests" or t == "tests" for t in tops), sorted(tops)
        assert "cluster/cli/__main__.py" in infos and "cluster/bench/driver.py" in infos
        for name in DATA:
            assert name in infos, name
            assert not stat.S_ISLNK(infos[name].external_attr >> 16), f"{name} is a link"
            assert z.read(name) == (REPO / name).read_bytes(), name


def test_installed_wheel_validates_and_writes_monitoring_config(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", wheel])
    # Third-party packages from this environment, by plain path lines: their own .pth files
    # (the checkout's editable finder among them) are not processed, so `cluster` is the wheel's.
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "owc-test-deps.pth").write_text("".join(f"{p}\n" for p in ours))

    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["HOME"] = str(home)  # the embedded default's file-SD directory is under ~/.cache
    probe = (
        "import importlib.util, cluster, cluster.cli\n"
        "from importlib.resources import files\n"
        "from cluster.bench.scenario import load_scenario\n"
        "assert importlib.util.find_spec('loadtests') is None\n"
        "load_scenario('smoke')\n"
        "print(cluster.__file__)\n"
        "print(files('cluster.config') / 'default.yaml')\n"
    )
    cluster_file, default = _run([py, "-c", probe], cwd=work, env=env).stdout.split()
    assert Path(cluster_file).is_relative_to(venv), cluster_file

    owc = venv / "bin" / "owc"
    r = _run([owc, "config", "validate", "--no-engine-args", default], cwd=work, env=env)
    assert "ok" in r.stdout and "1 model(s)" in r.stdout
    out = work / "prom"
    r = _run([owc, "monitor", "--write-config", "prom"], cwd=work, env=env)
    assert work / r.stdout.strip() == out / "prometheus.yml"
    rules = sorted((out / "rules").glob("*.yml"))
    assert [p.name for p in rules] == ["owc-alerts.yml", "owc-recording.yml"]
    assert (out / "targets").resolve() == (home / ".cache" / "owc" / "prometheus-targets").resolve()

    promtool = shutil.which("promtool", path=f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if promtool is None:
        pytest.skip("promtool not installed (`make tools`): the written config and rules are not checked")
    _run([promtool, "check", "config", out / "prometheus.yml"], cwd=work)
    _run([promtool, "check", "rules", *rules], cwd=work)
