"""The rollout analysis run in a test as `owc serve` runs it: ticking in the background,
reading the gateway processes' own metrics; a gateway process in front of fake engines, one
per (model, version)."""

from __future__ import annotations

import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml

from cluster.config.loader import parse_config
from cluster.discovery.endpoints import Endpoint
from cluster.discovery.rollouts import RolloutFiles
from cluster.discovery.sources import write_endpoints_file
from cluster.rollouts.analysis import LocalAnalysis
from tests.conftest import gateway_argv, server, wait_for


@contextmanager
def rollout_stack(d: Path, cfg: dict, engines: dict[tuple[str, str], list[str]], env: dict[str, str]):
    """(gateway, {(model, version): engine process}, the rollout files, the parsed config): the
    config written to ``d``, each engine's argv started, the gateway routing to them by version."""
    (d / "owc.yaml").write_text(yaml.safe_dump(cfg))
    with ExitStack() as stack:
        procs = {key: stack.enter_context(server(argv, env=env)) for key, argv in engines.items()}
        eps = [Endpoint(model=m, replica_id=f"{m}-{v}", url=p.url, version=v) for (m, v), p in procs.items()]
        write_endpoints_file(str(d / "endpoints.json"), eps)
        argv = [*gateway_argv(config=str(d / "owc.yaml")), "--endpoints-file", str(d / "endpoints.json")]
        gw = stack.enter_context(server(argv, env=env))
        files = RolloutFiles(d / "rollouts")
        wait_for(lambda: files.gateways(), 10, "the gateway process's metrics announcement")
        yield gw, procs, files, parse_config(cfg)


class Ticker:
    """The analysis ticking in the background, as owc serve runs it."""

    def __init__(self, analysis: LocalAnalysis, period_s: float = 0.25):
        self.analysis, self._stop = analysis, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period_s,), daemon=True)

    def _run(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            self.analysis.tick()

    def __enter__(self):
        self._thread.start()
        return self.analysis

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
