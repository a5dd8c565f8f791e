"""`owc gateway --config FILE` binds where the file says (gateway.host, gateway.port): --host and
--port override it only when given (before, their defaults 127.0.0.1:8000 always won, so a
config's port was ignored, and on a host where 8000 is taken the gateway landed there)."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

import cluster.gateway.edge.server
import cluster.gateway.main
from cluster.cli import app


@pytest.fixture
def bound(monkeypatch):
    """The config `owc gateway` would run with (nothing started)."""
    seen = {}

    def run(*, cfg, **_):
        seen["host"], seen["port"] = cfg.gateway.host, cfg.gateway.port

    monkeypatch.setattr(cluster.gateway.main, "run", run)
    monkeypatch.setattr(cluster.gateway.edge.server, "check_port_free", lambda *a, **k: None)  # nothing binds here
    return seen


@pytest.fixture
def config(tmp_path):
    p = tmp_path / "owc.yaml"
    p.write_text(yaml.safe_dump({"models": {"m1": {"source": "external"}},
                                 "gateway": {"host": "127.0.0.2", "port": 18555, "api_keys_env": None}}))
    return str(p)


@pytest.mark.parametrize("args, where", [
    ([], ("127.0.0.1", 8000)),
    (["--config", "{config}"], ("127.0.0.2", 18555)),
    (["--config", "{config}", "--port", "18556"], ("127.0.0.2", 18556)),
    (["--config", "{config}", "--host", "127.0.0.3"], ("127.0.0.3", 18555)),
    (["--port", "18557"], ("127.0.0.1", 18557)),
])
def test_the_config_says_where_unless_the_flags_do(bound, config, args, where):
    argv = ["gateway", "--upstream", "m1=http://127.0.0.1:9", *(a.replace("{config}", config) for a in args)]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 0, (r.output, r.exception)
    assert (bound["host"], bound["port"]) == where
