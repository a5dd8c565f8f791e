"""`owc monitor`: a local Prometheus with the shipped config and rules
(deploy/prometheus/) against the local cluster's file-SD targets."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from cluster.process import Command, ServerProcess

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


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
    """Lay out ``run_dir`` as the shipped config expects: prometheus.yml, `rules/` (the
    shipped rules) and `targets/` (the cluster's file-SD directory)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    sd_dir.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    if interval_s is not None:
        cfg["global"]["scrape_interval"] = cfg["global"]["evaluation_interval"] = f"{interval_s:g}s"
        for job in cfg["scrape_configs"]:
            for sd in job.get("file_sd_configs", []):
                sd["refresh_interval"] = f"{interval_s:g}s"
    for name, target in (("rules", PROMETHEUS_DIR / "rules"), ("targets", sd_dir)):
        link = run_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.resolve(), target_is_directory=True)
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
