"""`owc status` says what it found and what to do, never a traceback: nothing at the URL (is
`owc serve` running, which port), something that is not an owc gateway there (an engine, a
metrics port, another program: before, a JSONDecodeError traceback), a gateway ready or not
(exit 0 or 3)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cluster.cli import app
from cluster.process import free_port
from tests.conftest import fake_engine_argv, gateway_argv, server


def status(*args: str):
    return CliRunner().invoke(app, ["status", *args])


def test_nothing_running():
    url = f"http://127.0.0.1:{free_port()}"
    r = status("--url", url)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    assert f"gateway unreachable at {url}" in r.output and "owc serve" in r.output and "--url" in r.output, r.output


@pytest.fixture(scope="module")
def engine():
    with server(fake_engine_argv("m1")) as e:
        yield e


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_an_engine_is_not_a_gateway(engine, as_json):
    r = status("--url", engine.url, *(["--json"] if as_json else []))
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    assert f"no owc gateway at {engine.url}: GET /ready answered 404" in r.output, r.output
    assert "API port" in r.output


def test_a_gateways_metrics_port_is_not_its_api(engine):
    with server(gateway_argv(f"m1={engine.url}")) as gw:
        r = status("--url", gw.metrics_url)
        assert r.exit_code == 1 and "no owc gateway" in r.output, (r.output, r.exception)
        r = status("--url", gw.url)
        assert r.exit_code == 0 and "ready" in r.output and "m1" in r.output, (r.output, r.exception)
