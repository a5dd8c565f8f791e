"""An image, audio, file or document sent to gpt-oss (a harmony model, text only) is a 400 on
every route, before the engine: vLLM's harmony path keeps only each message's text and would
answer as if the part had not been sent (tests/integration/gpt_oss/test_through_owc.py shows it
on real vLLM). Other models are left to their engine (a vision model reads images)."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest
import yaml

from cluster.gateway.admission.text_only import non_text_content, note_tool_media
from cluster.gateway.context import CHAT, COMPLETIONS, COUNT_TOKENS, MESSAGES, RESPONSES
from tests.conftest import fake_engine_argv, gateway_argv, server

IMAGE_URL = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
INPUT_IMAGE = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
IMAGE_BLOCK = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
TEXT = {"type": "text", "text": "what is this?"}


def _user(*parts):
    return {"role": "user", "content": list(parts)}


@pytest.mark.parametrize("route, data, param", [
    (CHAT, {"messages": [_user(TEXT, IMAGE_URL)]}, "messages[0].content[1].type"),
    (CHAT, {"messages": [{"role": "system", "content": "be brief"}, _user({"type": "input_audio", "input_audio": {}})]},
     "messages[1].content[0].type"),
    (CHAT, {"messages": [_user({"type": "file", "file": {"file_id": "f"}})]}, "messages[0].content[0].type"),
    (RESPONSES, {"input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}, INPUT_IMAGE]}]},
     "input[0].content[1].type"),
    (RESPONSES, {"input": [{"type": "message", "role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0].type"),
    (MESSAGES, {"messages": [_user(TEXT, IMAGE_BLOCK)]}, "messages[0].content[1].type"),
    (MESSAGES, {"messages": [_user({"type": "document", "source": {}})]}, "messages[0].content[0].type"),
    (COUNT_TOKENS, {"messages": [_user(IMAGE_BLOCK)]}, "messages[0].content[0].type"),
])
def test_a_part_that_is_not_text_is_a_400_naming_it(route, data, param):
    err = non_text_content(route, data, "gpt-oss-20b")
    assert err is not None and err.status == 400 and err.param == param and err.code == "unsupported_content"
    assert "text-only" in err.message and "gpt-oss-20b" in err.message


@pytest.mark.parametrize("route, data", [
    (CHAT, {"messages": [{"role": "user", "content": "hi"}]}),
    (CHAT, {"messages": [_user(TEXT), {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}]}),
    (CHAT, {"messages": "not a list"}),  # the schema's 400, not this one
    (RESPONSES, {"input": "hi"}),
    (RESPONSES, {"input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}]},
                           {"type": "function_call_output", "call_id": "c", "output": "4"},
                           {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "r"}]}]}),
    (MESSAGES, {"messages": [_user(TEXT), {"role": "assistant", "content": [{"type": "thinking", "thinking": "t"}]}]}),
    (MESSAGES, {"messages": [_user({"type": "tool_result", "tool_use_id": "t", "content": "4"})]}),
    (COMPLETIONS, {"prompt": [IMAGE_URL]}),  # no content parts on this route
    # parts vLLM 0.32's chat reads as text (its TEXT_PART_TYPES)
    (CHAT, {"messages": [_user({"type": "input_text", "text": "x"}),
                         {"role": "assistant", "content": [{"type": "thinking", "thinking": "t"},
                                                           {"type": "output_text", "text": "y"}]}]}),
    # Anthropic's tool search: a tool_result naming a deferred tool
    (MESSAGES, {"messages": [_user(TEXT),
                             {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "search", "input": {}}]},
                             _user({"type": "tool_result", "tool_use_id": "t",
                                    "content": [{"type": "tool_reference", "tool_name": "get_weather"}]})]}),
    # vLLM's tool changes in a system turn
    (MESSAGES, {"messages": [{"role": "system", "content": [{"type": "tool_addition",
                                                              "tool": {"type": "tool_reference", "name": "get_weather"}}]},
                             _user(TEXT)]}),
    # media inside a tool_result: noted, not refused (note_tool_media)
    (MESSAGES, {"messages": [_user({"type": "tool_result", "tool_use_id": "t", "content": [TEXT, IMAGE_BLOCK]})]}),
])
def test_text_passes(route, data):
    assert non_text_content(route, data, "gpt-oss-20b") is None


def test_media_an_agents_tool_read_is_a_note_the_model_reads():
    """A tool_result's block goes back with every later turn: a 400 there would end the session."""
    data = {"messages": [_user(TEXT), _user({"type": "tool_result", "tool_use_id": "t", "content": [TEXT, IMAGE_BLOCK]}),
                         _user({"type": "tool_result", "tool_use_id": "u", "content": "plain"})]}
    assert note_tool_media(MESSAGES, data, "gpt-oss-20b") is True
    assert data["messages"][1]["content"][0]["content"] == [TEXT, {"type": "text", "text": "[image omitted: gpt-oss-20b reads text only]"}]
    assert data["messages"][2]["content"][0]["content"] == "plain"
    assert note_tool_media(MESSAGES, data, "gpt-oss-20b") is False  # nothing left to note
    assert note_tool_media(CHAT, {"messages": [_user(IMAGE_URL)]}, "gpt-oss-20b") is False


def test_a_function_call_outputs_parts_are_one_text_with_media_noted():
    """vLLM's harmony path takes a function_call_output's output as a string and fails a list."""
    call = {"type": "function_call", "call_id": "c", "name": "look", "arguments": "{}"}
    out = {"type": "function_call_output", "call_id": "c",
           "output": [{"type": "input_text", "text": "a cat"}, INPUT_IMAGE, {"type": "input_file", "file_id": "f"}]}
    other = {"type": "function_call_output", "call_id": "d", "output": [{"type": "input_text", "text": "x"}, {"type": "new"}]}
    data = {"input": [_user({"type": "input_text", "text": "look"}), call, out, other,
                      {"type": "function_call_output", "call_id": "e", "output": "plain"}]}
    assert non_text_content(RESPONSES, data, "gpt-oss-20b") is None  # an output's media: noted, not refused
    assert note_tool_media(RESPONSES, data, "gpt-oss-20b") is True
    assert data["input"][2]["output"] == ("a cat\n[input_image omitted: gpt-oss-20b reads text only]\n"
                                          "[input_file omitted: gpt-oss-20b reads text only]")
    assert data["input"][3] == other and data["input"][4]["output"] == "plain"  # an unknown part: as sent
    assert note_tool_media(RESPONSES, data, "gpt-oss-20b") is False


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    d = tmp_path_factory.mktemp("text_only")
    cfg = d / "owc.yaml"
    cfg.write_text(yaml.safe_dump({"models": {"gpt-oss-fake": {"source": "external"}, "vision": {"source": "external"}},
                                   "gateway": {"api_keys_env": None, "access_log": {"enabled": False}}}))
    with server(fake_engine_argv("gpt-oss-fake", itl_ms=1)) as e, server(fake_engine_argv("vision", itl_ms=1)) as v, \
            server(gateway_argv(f"gpt-oss-fake={e.url}", f"vision={v.url}", config=str(cfg))) as g:
        yield g


def test_gpt_oss_refuses_an_image_on_every_route_and_other_models_pass_it_on(gateway):
    oai = openai.OpenAI(base_url=gateway.url + "/v1", api_key="-", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="gpt-oss-fake", messages=[_user(TEXT, IMAGE_URL)], max_tokens=4)
    assert e.value.body["param"] == "messages[0].content[1].type" and "image_url" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model="gpt-oss-fake", input=[{"role": "user", "content": [INPUT_IMAGE]}])
    with pytest.raises(openai.BadRequestError):  # streamed: refused before the stream starts
        oai.chat.completions.create(model="gpt-oss-fake", messages=[_user(IMAGE_URL)], max_tokens=4, stream=True)
    ant = anthropic.Anthropic(base_url=gateway.url, api_key="-", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as a:
        ant.messages.create(model="gpt-oss-fake", max_tokens=4, messages=[_user(TEXT, IMAGE_BLOCK)])
    assert a.value.body["error"]["type"] == "invalid_request_error" and "image" in a.value.body["error"]["message"]
    # an image an agent's tool read is noted for the model, and the session goes on
    turns = [_user(TEXT), {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "read", "input": {}}]},
             _user({"type": "tool_result", "tool_use_id": "t", "content": [IMAGE_BLOCK]})]
    assert ant.messages.create(model="gpt-oss-fake", max_tokens=4, messages=turns).content
    # a model that is not gpt-oss: its engine decides (the fake engine answers)
    r = httpx.post(gateway.url + "/v1/chat/completions", timeout=30,
                   json={"model": "vision", "messages": [_user(TEXT, IMAGE_URL)], "max_tokens": 4})
    assert r.status_code == 200, r.text
