"""The one list of OpenAI parameters owc accepts and ignores (cluster.gateway.admission.params): each
is accepted on the routes OpenAI defines it on (and only there), dropped before the engine
unless vLLM takes it on that route, true to OpenAI's published description and to vLLM's
own request models, and the README's list is this list."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from cluster.config.loader import parse_config
from cluster.gateway.admission.entry import ROUTES, Admission
from cluster.gateway.errors import OpenAIError
from cluster.gateway.context import COUNT_TOKENS, MESSAGES
from cluster.gateway.observability.metrics import GatewayMetrics
from cluster.gateway.admission.params import ACCEPTED, ALL, CHAT, COMPLETIONS, RESPONSES, accepted_on, drop_for_engine, readme_table
from cluster.gateway.admission.validation import parse_json, validate

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "tests" / "specs"
BASE = {
    CHAT: {"model": "m", "messages": [{"role": "user", "content": "x"}]},
    COMPLETIONS: {"model": "m", "prompt": "x"},
    RESPONSES: {"model": "m", "input": "x"},
}
SPEC_SCHEMA = {CHAT: ("openai-openapi-chat-completions.json", "CreateChatCompletionRequest"),
               COMPLETIONS: ("openai-openapi-chat-completions.json", "CreateCompletionRequest"),
               RESPONSES: ("openai-openapi-responses.json", "CreateResponse")}
VLLM_MODELS = {CHAT: ("entrypoints/openai/chat_completion/protocol.py", "ChatCompletionRequest"),
               COMPLETIONS: ("entrypoints/openai/completion/protocol.py", "CompletionRequest"),
               RESPONSES: ("entrypoints/openai/responses/protocol.py", "ResponsesRequest")}


def _with(route: str, name: str, value) -> dict:
    body = json.loads(json.dumps(BASE[route]))
    parent, _, child = name.partition(".")
    if child:
        body[parent] = {child: value}
        if route != RESPONSES:
            body["stream"] = True  # OpenAI: stream options only with a stream
    else:
        body[parent] = value
    return body


def test_every_route_of_the_gateway_is_covered():
    # Every OpenAI route (Anthropic's Messages routes take Anthropic's parameters: not this table's).
    assert set(ALL) == set(ROUTES) - {MESSAGES, COUNT_TOKENS}


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_on_its_routes_and_refused_elsewhere(name):
    a = ACCEPTED[name]
    for route in ALL:
        body = _with(route, name, a.example)
        if route in a.routes or name in ROUTES[route].model_fields:  # e.g. store: vLLM's own on responses
            validate(body, ROUTES[route])  # no 400
        else:
            with pytest.raises(OpenAIError) as e:
                validate(body, ROUTES[route])
            assert e.value.status == 400 and e.value.code == "unsupported_parameter"


def _admission() -> Admission:
    cfg = parse_config({"models": {"m": {"source": "external"}}, "gateway": {"api_keys_env": None}})
    return Admission(config=cfg, auth=None, forwarder=None, accounting=None, metrics=GatewayMetrics(CollectorRegistry()))


@pytest.mark.parametrize("route", ALL)
def test_what_the_engine_receives(route):
    """Every accepted parameter at once: the engine's body keeps exactly those vLLM takes."""
    body = json.loads(json.dumps(BASE[route]))
    for name, a in accepted_on(route).items():
        parent, _, child = name.partition(".")
        if child:
            body.setdefault(parent, {})[child] = a.example
        else:
            body[parent] = a.example
    raw = orjson.dumps(body)
    data = parse_json(raw)
    job = _admission()._job(route, validate(data, ROUTES[route]), data, raw, headers={}, tenant="t",
                            request_id="r", span=None)
    sent = orjson.loads(job.body)
    passed = {n for n, a in accepted_on(route).items() if route in a.engine}
    assert {k for k in sent if k in {n.split(".")[0] for n in ACCEPTED}} - {"stream_options"} == passed
    assert "include_obfuscation" not in sent.get("stream_options", {})
    assert {k: v for k, v in sent.items() if k not in ACCEPTED and k != "stream_options"} == BASE[route]


def test_a_request_without_them_keeps_its_bytes():
    raw = orjson.dumps({**BASE[RESPONSES], "reasoning": {"effort": "low"}, "store": False, "stream": True})
    data = parse_json(raw)
    job = _admission()._job(RESPONSES, validate(data, ROUTES[RESPONSES]), data, raw, headers={}, tenant="t",
                            request_id="r", span=None)
    assert job.body is raw and not job.strip_usage  # a Responses stream is not asked for a usage event


def test_nested_drop_keeps_the_rest_and_vllms_own_objects():
    data = {"stream_options": {"include_obfuscation": True, "include_usage": True}}
    assert drop_for_engine(data, CHAT) and data == {"stream_options": {"include_usage": True}}
    data = {"stream_options": {"include_obfuscation": True}}
    assert drop_for_engine(data, CHAT) and data == {"stream_options": {}}  # vLLM's chat takes stream_options
    data = {"stream_options": {"include_obfuscation": True}}
    assert drop_for_engine(data, RESPONSES) and data == {}  # vLLM's responses has none
    data = {"user": "u", "metadata": {"a": 1}}
    assert not drop_for_engine(data, RESPONSES) and data == {"user": "u", "metadata": {"a": 1}}
    assert drop_for_engine(data, CHAT) and data == {"user": "u"}


def _spec_props(route: str) -> dict:
    file, name = SPEC_SCHEMA[route]
    schemas = json.loads((SPECS / file).read_text())["components"]["schemas"]

    def resolve(s: dict) -> dict:
        while "$ref" in s:
            s = schemas[s["$ref"].split("/")[-1]]
        return s

    def props(s: dict) -> dict:
        s = resolve(s)
        out: dict = {}
        for part in s.get("allOf", []) + s.get("anyOf", []) + [s]:
            if part is not s:
                out.update(props(part))
        out.update(s.get("properties", {}))
        return out

    return {k: props(v) for k, v in props(schemas[name]).items()} | {"": props(schemas[name])}


@pytest.mark.parametrize("route", ALL)
def test_the_list_agrees_with_openais_description(route):
    props = _spec_props(route)
    for name in accepted_on(route):
        parent, _, child = name.partition(".")
        assert parent in props[""], f"{name}: not an OpenAI parameter of {route}"
        if child:
            assert child in props[parent], f"{name}: not in OpenAI's {parent} of {route}"


def _vllm_fields(route: str) -> set[str]:
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vLLM not installed")
    file, cls = VLLM_MODELS[route]
    tree = ast.parse((Path(spec.submodule_search_locations[0]) / file).read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}


@pytest.mark.parametrize("route", ALL)
def test_passed_exactly_where_vllm_takes_it(route):
    """Read from vLLM's own request models (source, not imported: fast): a parameter vLLM
    has is passed, one it lacks is dropped, so a vLLM upgrade that adds one shows here."""
    fields = _vllm_fields(route)
    for name, a in accepted_on(route).items():
        top = name.split(".")[0]
        if "." in name:
            continue  # a field inside an object: vLLM's StreamOptions has no include_obfuscation
        assert (top in fields) == (route in a.engine), f"{name} on {route}: vLLM has it: {top in fields}"


def test_the_readme_lists_exactly_these():
    text = (REPO / "docs" / "gpt-oss.md").read_text()
    start, end = "<!-- accepted-params:start -->", "<!-- accepted-params:end -->"
    assert start in text and end in text, "README lacks the accepted-parameters list"
    assert text.split(start, 1)[1].split(end, 1)[0].strip() == readme_table()


def test_readme_table_has_a_row_per_parameter():
    rows = readme_table().splitlines()[2:]
    assert [r.split("|")[1].strip().strip("`") for r in rows] == list(ACCEPTED)
    assert "passed to vLLM (responses)" in next(r for r in rows if r.startswith("| `metadata`"))
