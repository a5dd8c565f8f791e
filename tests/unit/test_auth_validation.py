import pytest

from cluster.config.schema import GatewayConfig
from cluster.gateway.auth.authenticator import ANONYMOUS, KeyStore
from cluster.gateway.errors import OpenAIError
from cluster.gateway.edge.server import UnsafeBindError, check_bind_policy
from cluster.gateway.admission.validation import ChatCompletionRequest, CompletionRequest, parse_json, validate


def test_no_keys_means_anonymous():
    assert KeyStore({}).tenant_for(None) == ANONYMOUS


@pytest.mark.parametrize(
    "header, tenant, code",
    [("Bearer k1", "acme", None), ("bearer k2", "beta", None), (None, None, "missing_api_key"),
     ("Bearer nope", None, "invalid_api_key"), ("Token k1", None, "invalid_api_key"), ("Bearer ", None, "invalid_api_key")],
)
def test_keys(header, tenant, code):
    ks = KeyStore({"k1": "acme", "k2": "beta"})
    if code is None:
        assert ks.tenant_for(header) == tenant
    else:
        with pytest.raises(OpenAIError) as e:
            ks.tenant_for(header)
        assert e.value.status == 401 and e.value.code == code


def test_keys_from_file_and_env(tmp_path):
    f = tmp_path / "keys.yaml"
    f.write_text("keys:\n  sk-1: acme\n")
    ks = KeyStore.load(file=str(f), env_var="K", environ={"K": "sk-2=beta, sk-3=gamma"})
    assert [ks.tenant_for(f"Bearer sk-{i}") for i in (1, 2, 3)] == ["acme", "beta", "gamma"]
    with pytest.raises(ValueError):
        KeyStore.load(file=None, env_var="K", environ={"K": "no-equals-sign"})


@pytest.mark.parametrize(
    "host, keys, refused",
    [("127.0.0.1", {}, False), ("localhost", {}, False), ("::1", {}, False), ("0.0.0.0", {}, True),
     ("10.1.2.3", {}, True), ("0.0.0.0", {"k": "t"}, False)],
)
def test_bind_policy(host, keys, refused):
    gw = GatewayConfig(host=host)
    if refused:
        with pytest.raises(UnsafeBindError):
            check_bind_policy(gw, KeyStore(keys))
    else:
        check_bind_policy(gw, KeyStore(keys))


def test_validation_passes_vllm_extensions_and_nulls():
    req = validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "ignore_eos": True, "top_k": 5,
         "stream_options": {"include_usage": True}, "audio": None},
        ChatCompletionRequest,
    )
    assert req.ignore_eos and req.top_k == 5 and req.stream_options.include_usage
    assert validate({"model": "m", "prompt": [1, 2, 3]}, CompletionRequest).prompt == [1, 2, 3]


@pytest.mark.parametrize("body", [b"", b"nul", b'"str"', b"1"])
def test_parse_json_rejects_non_objects(body):
    with pytest.raises(OpenAIError) as e:
        parse_json(body)
    assert e.value.status == 400


@pytest.mark.parametrize("part", [{"type": "text", "text": 5}, {"type": "text"}, {"type": "text", "text": None},
                                  {"text": "no type"}, 7])
def test_malformed_content_parts_are_a_400(part):
    """The schemathesis run that found 25 x 500: a text part whose text is not a string."""
    with pytest.raises(OpenAIError) as e:
        validate({"model": "m", "messages": [{"role": "user", "content": [part]}]}, ChatCompletionRequest)
    assert e.value.status == 400


def test_prefix_key_rendering_survives_any_content_part():
    from cluster.routing.keys import canonical_prompt

    odd = [{"type": "text", "text": 5}, {"type": "text", "text": ["x"]}, None, 3, {"type": "image_url"}]
    assert canonical_prompt({"messages": [{"role": "user", "content": odd}]}, 100) == "\x1euser\x1d" + "\x1f" * 5


@pytest.mark.parametrize("route, choice, refused", [
    ("chat", "auto", False),
    ("chat", {"type": "function", "function": {"name": "f"}}, False),
    ("responses", {"type": "function", "name": "f"}, False),
    ("responses", "required", False),
    # vLLM 0.32 takes these and enforces nothing: mode 'required' unheld, the tool list unrestricted
    ("chat", {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": []}}, True),
    ("responses", {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "f"}]}, True),
    ("responses", {"type": "file_search"}, True),  # a hosted tool, chosen: OpenAI's 400 too
    ("responses", {"type": "web_search_preview"}, True),
])
def test_a_tool_choice_the_engine_would_ignore_is_a_400(route, choice, refused):
    """Review 7: tool_choice allowed_tools (and a hosted tool's) answered 200 with a freer choice
    than asked (plain text where 'required' was set), as on bare vLLM."""
    from cluster.gateway.admission.validation import ResponsesRequest

    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}] if route == "chat" else \
        [{"type": "function", "name": "f", "parameters": {}}]
    body = {"model": "m", "tools": tools, "tool_choice": choice}
    body |= {"messages": [{"role": "user", "content": "x"}]} if route == "chat" else {"input": "x"}
    schema = ChatCompletionRequest if route == "chat" else ResponsesRequest
    if not refused:
        validate(body, schema)
        return
    with pytest.raises(OpenAIError) as e:
        validate(body, schema)
    assert (e.value.status, e.value.param, e.value.code) == (400, "tool_choice", "unsupported_value")
