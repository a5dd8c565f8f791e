"""`owc conformance` against the fake engine, bare and behind the gateway (guarded by the
engine key, as an owc-started engine is): every row matches, the table and the JSON are
written, a mismatch is found and is exit status 1. The same command on real vLLM with the
tiny gpt-oss model is in tests/integration/test_gpt_oss.py."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from cluster.cli import app
from cluster.conformance import Row, clients, differences, first_model, run, table
from cluster.conformance.cases import CASES, Case
from cluster.gateway.admission.params import ACCEPTED
from tests.conftest import fake_engine_argv, gateway_argv, server

ENGINE_KEY = "engine-key-for-conformance"
API_KEY = "sk-conf"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("conf") / "owc.yaml"
    cfg.write_text(yaml.safe_dump({"models": {"fake-model": {"source": "external", "aliases": ["fm"]}},
                                   "gateway": {"api_keys_env": "CONF_TEST_KEYS"}}))
    env = {"OWC_ENGINE_KEY": ENGINE_KEY, "CONF_TEST_KEYS": f"{API_KEY}=team-c",
           "VLLM_ENABLE_RESPONSES_API_STORE": "1"}  # the engine keeps responses (the gateway ignores it)
    with server(fake_engine_argv("fake-model", ttft_ms=1, itl_ms=0), env=env) as e, \
            server(gateway_argv(f"fake-model={e.url}", config=str(cfg)), env=env) as g:
        yield e, g


def test_differences_names_the_paths():
    assert differences({"a": 1, "b": {"c": [1, 2]}}, {"a": 1, "b": {"c": [1, 2]}}) == []
    assert differences({"a": 1, "b": {"c": 2}}, {"a": 2, "b": {"c": 2, "d": 0}}) == ["a", "b.d"]
    assert differences({"status": 200}, {"status": 400}) == ["status"]


def test_every_feature_has_a_case():
    names = {c.name for c in CASES}
    for feature in ("chat", "chat stream", "chat reasoning separate", "chat tool_choice auto", "chat tool_choice required",
                    "chat tool_choice named", "chat parallel_tool_calls", "chat json_schema", "chat json_object",
                    "responses", "responses stream", "responses tools", "responses json_schema",
                    "chat reasoning_effort valid", "chat reasoning_effort invalid", "chat include_reasoning false",
                    "chat ignored parameters", "responses ignored parameters",
                    "responses follow-up (previous_response_id)", "responses retrieval", "responses tool output turn"):
        assert feature in names
    ignored = next(c for c in CASES if c.name == "chat ignored parameters").compares
    assert all(n in ignored for n, a in ACCEPTED.items() if "/v1/chat/completions" in a.routes)


def test_all_rows_match_through_the_gateway(stack):
    e, g = stack
    engine, gateway = clients(engine=e.url, gateway=g.url + "/v1", api_key=API_KEY, engine_key=ENGINE_KEY)
    assert first_model(engine) == "fake-model"
    rows = run(engine, gateway, model="fm", engine_model="fake-model")
    assert [r.feature for r in rows] == [c.name for c in CASES]
    assert [r.feature for r in rows if not r.match] == []
    stream = next(r for r in rows if r.feature == "responses stream")
    assert stream.engine["events"][0] == "response.created" and stream.engine["events"] == stream.gateway["events"]
    assert all(r.engine.get("status", 200) != 401 for r in rows)  # the engine key opened the bare engine
    # Stored responses: served through the gateway as by the engine's own store, not 404 on both sides.
    follow = next(r for r in rows if r.feature.startswith("responses follow-up")).gateway
    assert follow["follow_up"]["status"] == follow["follow_up_stream"]["status"] == 200
    assert follow["follow_up"]["usage"]["in"] > follow["first"]["usage"]["in"]  # the stored conversation came along
    got = next(r for r in rows if r.feature == "responses retrieval").gateway
    assert got["retrieved"]["status"] == 200 and got["retrieved"]["same_id"] and got["retrieved"]["same_text"]
    assert (got["cancel"]["status"], got["unknown"]["status"]) == (400, 404)
    tool = next(r for r in rows if r.feature == "responses tool output turn").gateway
    assert tool["answer"]["status"] == 200 and tool["answer"]["text"].startswith(" sunny, 21 C")
    # Anthropic's Messages API, with the anthropic SDK on both sides (x-api-key through the gateway).
    msg = {r.feature: r for r in rows if r.feature.startswith("messages")}
    assert msg["messages stream"].gateway["status"] == 200 and msg["messages stream"].gateway["events"][0] == "message_start"
    assert msg["messages tool use, tool result"].gateway["result"]["status"] == 200
    assert msg["messages unknown model"].gateway == {"status": 404, "type": "error", "error": ["message", "type"]}


def test_a_mismatch_is_a_row_that_says_where():
    case = Case("model echo", "model", lambda c, m, s: {"status": 200, "model": m, "same": 1})
    (row,) = run(None, None, model="a", engine_model="b", cases=[case])
    assert not row.match and row.differs == ["model"]
    assert row.as_dict()["match"] is False
    assert Row("x", "", {"status": 200}, {"status": 200}).match
    assert table([row]).row_count == 1


def test_the_command_writes_the_table_and_json_and_exits_by_the_result(stack, tmp_path):
    e, g = stack
    out = tmp_path / "rows.json"
    args = ["conformance", "--engine", e.url, "--gateway", g.url, "--api-key", API_KEY, "--engine-key", ENGINE_KEY,
            "--max-tokens", "4"]
    r = CliRunner().invoke(app, [*args, "--only", "responses", "--json", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "rows match" in r.output and "responses stream" in r.output
    doc = json.loads(out.read_text())
    assert doc["all_match"] and doc["engine_model"] == "fake-model" and all(x["match"] for x in doc["rows"])
    assert {x["feature"] for x in doc["rows"]} == {c.name for c in CASES if "responses" in c.name}
    # A model the gateway does not serve: 404 there, 200 on the engine: every row differs.
    r = CliRunner().invoke(app, [*args, "--only", "chat stream", "--model", "nope"])
    assert r.exit_code == 1 and "differ: chat stream" in r.output
    # No engine key: the bare engine refuses to list its models.
    r = CliRunner().invoke(app, ["conformance", "--engine", e.url, "--gateway", g.url], env={"OWC_ENGINE_KEY": ""})
    assert r.exit_code == 2


def test_the_readme_shows_the_committed_results():
    from pathlib import Path

    from cluster.conformance import markdown

    repo = Path(__file__).resolve().parents[2]
    results = repo / "loadtests" / "results" / "conformance.json"
    if not results.exists():
        pytest.skip("no committed conformance results yet")
    doc = json.loads(results.read_text())
    assert doc["all_match"], [r["feature"] for r in doc["rows"] if not r["match"]]
    text = (repo / "docs" / "gpt-oss.md").read_text()
    block = text.split("<!-- conformance:start -->", 1)[1].split("<!-- conformance:end -->", 1)[0]
    assert block.strip() == markdown(doc)


def test_a_stream_cut_by_max_output_tokens_compares_by_its_status():
    """Bare vLLM ends it with response.completed (status incomplete), the gateway with OpenAI's
    response.incomplete: the row compares what the stream says, not which of the two spelled it."""
    from types import SimpleNamespace

    from cluster.conformance.calls import responses_stream

    def client(final_type: str):
        final = SimpleNamespace(type=final_type, response=SimpleNamespace(status="incomplete", output=[],
                                                                           output_text="", usage=None))
        events = [SimpleNamespace(type="response.created"), final]
        return SimpleNamespace(responses=SimpleNamespace(create=lambda **_: iter(events)))

    bare, owc = responses_stream(client("response.completed")), responses_stream(client("response.incomplete"))
    assert bare == owc and bare["events"] == ["response.created", "response.incomplete"]
