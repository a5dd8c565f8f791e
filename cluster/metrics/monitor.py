"""`owc monitor`: a local Prometheus with the shipped config and rules (package data,
cluster/metrics/prometheus/; deploy/prometheus links to it) against the local cluster's
file-SD targets."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from cluster.process import Command, ServerProcess

if TYPE_CHECKING:
    from importlib.abc import Traversable

# Package data, so that a wheel install finds it as an editable checkout does.
PROMETHEUS = resources.files("cluster.metrics").joinpath("prometheus")


def rule_files() -> list[Traversable]:
    """The shipped rule files (recording rules, alerts), by name."""
    return sorted((f for f in PROMETHEUS.joinpath("rules").iterdir() if f.name.endswith(".yml")), key=lambda f: f.name)


class PrometheusNotFound(RuntimeError):
    pass


def find_prometheus(binary: str | None = None) -> str:
    found = shutil.which(binary or "prometheus")
    if not found:
        raise PrometheusNotFound(
            "no `prometheus` binary on PATH: install it (Debian/Ubuntu: apt-get install prometheus; "
            "elsewhere: https://prometheus.io/download/) or pass --prometheus PATH"
        )
    return found


def prepare(run_dir: Path, sd_dir: Path, *, interval_s: float | None = None) -> Path:
    """Lay out ``run_dir`` as the shipped config expects: prometheus.yml, `rules/` (copies
    of the shipped rules) and `targets/` (a link to the cluster's file-SD directory)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    sd_dir.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load(PROMETHEUS.joinpath("prometheus.yml").read_text())
    if interval_s is not None:
        cfg["global"]["scrape_interval"] = cfg["global"]["evaluation_interval"] = f"{interval_s:g}s"
        for job in cfg["scrape_configs"]:
            for sd in job.get("file_sd_configs", []):
                sd["refresh_interval"] = f"{interval_s:g}s"
    rules = run_dir / "rules"
    if rules.is_symlink() or rules.is_file():  # earlier versions linked it to the checkout's rules
        rules.unlink()
    rules.mkdir(exist_ok=True)
    for stale in rules.glob("*.yml"):
        stale.unlink()
    for f in rule_files():
        (rules / f.name).write_text(f.read_text())
    link = run_dir / "targets"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(sd_dir.resolve(), target_is_directory=True)
    path = run_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def prometheus_process(
    binary: str, run_dir: Path, *, host: str = "127.0.0.1", port: int | None = None, retention: str = "2d"
) -> ServerProcess:
    argv = [
        binary, f"--config.file={run_dir / 'prometheus.yml'}", f"--storage.tsdb.path={run_dir / 'data'}",
        f"--storage.tsdb.retention.time={retention}", f"--web.listen-address={host}:{{port}}",
        "--web.enable-lifecycle",
    ]
    return ServerProcess(Command(argv), log_path=run_dir / "prometheus.log", host=host, port=port, health_path="/-/ready")
