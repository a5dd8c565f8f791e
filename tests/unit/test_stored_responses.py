"""Stored responses in front of engines owc did not start: `owc gateway --upstream` with no
config file (tenant keys from OWC_API_KEYS only) before fake engines that keep responses as
vLLM does with VLLM_ENABLE_RESPONSES_API_STORE=1 (loadtests.fake_responses), two of them for
one model, and one engine of another model without the store.

Follow-ups (`previous_response_id`, streamed and not), retrieval, cancel and a tool-output turn
answer as the engine does; every follow-up and retrieval reaches the replica that stored it;
another tenant's id is a 404; where the engine keeps nothing the 404 names the setting."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.conftest import fake_engine_argv, gateway_argv, server

STORE = {"VLLM_ENABLE_RESPONSES_API_STORE": "1"}
KEYS = {"OWC_API_KEYS": "sk-alpha=alpha,sk-beta=beta"}
TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]


@pytest.fixture(scope="module")
def stack():
    argv = lambda m: fake_engine_argv(m, ttft_ms=1, itl_ms=0)  # noqa: E731
    with server(argv("m"), env=STORE) as a, server(argv("m"), env=STORE) as b, server(argv("plain")) as off, \
            server(gateway_argv(f"m={a.url}", f"m={b.url}", f"plain={off.url}"), env=KEYS) as g:
        yield (a, b), off, g


def _sdk(g, key: str = "sk-alpha") -> openai.OpenAI:
    return openai.OpenAI(base_url=g.url + "/v1", api_key=key, max_retries=0, timeout=30)


def _holders(engines, rid: str) -> list[int]:
    """Which engines hold ``rid`` in their own store."""
    return [i for i, e in enumerate(engines) if httpx.get(f"{e.url}/v1/responses/{rid}", timeout=10).status_code == 200]


def test_follow_ups_and_retrievals_reach_the_replica_that_stored_them(stack):
    engines, _, g = stack

    def conversation(i: int) -> int:
        c = _sdk(g)
        first = c.responses.create(model="m", input=f"question {i} " * (i + 1), max_output_tokens=4)
        (owner,) = _holders(engines, first.id)  # kept by exactly one engine, under the gateway's id
        follow = c.responses.create(model="m", input="and then?", previous_response_id=first.id, max_output_tokens=4)
        # The engine rendered the stored conversation before the new input, as vLLM does.
        assert follow.usage.input_tokens == first.usage.total_tokens + 2
        assert _holders(engines, follow.id) == [owner]
        with c.responses.stream(model="m", input="more", previous_response_id=follow.id, max_output_tokens=4) as s:
            streamed = s.get_final_response()
        assert streamed.usage.input_tokens == follow.usage.total_tokens + 1 and _holders(engines, streamed.id) == [owner]
        got = c.responses.retrieve(follow.id)
        assert (got.id, got.output_text, got.usage.input_tokens) == (follow.id, follow.output_text, follow.usage.input_tokens)
        with pytest.raises(openai.BadRequestError, match="synchronous"):  # the engine's own answer, from the owner
            c.responses.cancel(first.id)
        return owner

    with ThreadPoolExecutor(6) as pool:
        owners = list(pool.map(conversation, range(12)))
    assert set(owners) == {0, 1}, owners  # both upstreams hold conversations


def test_a_tool_output_turn_continues_the_call(stack):
    _, _, g = stack
    c = _sdk(g)
    call = c.responses.create(model="m", input="weather?", tools=TOOLS, tool_choice="required", max_output_tokens=4)
    (fc,) = [i for i in call.output if i.type == "function_call"]
    answer = c.responses.create(model="m", previous_response_id=call.id, tools=TOOLS, max_output_tokens=4,
                                input=[{"type": "function_call_output", "call_id": fc.call_id, "output": "sunny"}])
    assert answer.output_text.startswith(" sunny")  # the engine matched the output to its stored call


def test_another_tenants_id_is_a_404(stack):
    _, _, g = stack
    mine = _sdk(g).responses.create(model="m", input="secret", max_output_tokens=2)
    beta = _sdk(g, "sk-beta")
    for call in (lambda: beta.responses.retrieve(mine.id), lambda: beta.responses.cancel(mine.id)):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert e.value.body["message"].startswith(f"Response with id '{mine.id}' not found.")
        assert e.value.body["param"] == "response_id"
    with pytest.raises(openai.BadRequestError) as e:  # a follow-up: OpenAI's 400, not a 404 (no router cooldown)
        beta.responses.create(model="m", input="x", previous_response_id=mine.id, max_output_tokens=2)
    assert e.value.body["message"].startswith(f"Previous response with id '{mine.id}' not found.")
    assert (e.value.body["param"], e.value.body["code"]) == ("previous_response_id", "previous_response_not_found")
    assert _sdk(g).responses.retrieve(mine.id).id == mine.id  # still the owner's


def test_ids_the_gateway_did_not_mint_are_404_without_reaching_an_engine(stack):
    engines, _, g = stack
    direct = httpx.post(engines[0].url + "/v1/responses", json={"model": "m", "input": "hi", "max_output_tokens": 2},
                        timeout=10).json()["id"]  # in engine 0's store, made without the gateway
    with pytest.raises(openai.NotFoundError):
        _sdk(g).responses.retrieve(direct)
    with pytest.raises(openai.BadRequestError):
        _sdk(g).responses.create(model="m", input="x", previous_response_id=direct, max_output_tokens=2)
    unstored = _sdk(g).responses.create(model="m", input="hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        _sdk(g).responses.retrieve(unstored.id)


def test_an_engine_without_its_store_answers_a_404_naming_the_setting(stack):
    _, _, g = stack
    c = _sdk(g)
    made = c.responses.create(model="plain", input="hi", max_output_tokens=2)  # served; the engine kept nothing
    for call, error, first in (
            (lambda: c.responses.retrieve(made.id), openai.NotFoundError, "Response"),
            (lambda: c.responses.create(model="plain", input="x", previous_response_id=made.id, max_output_tokens=2),
             openai.BadRequestError, "Previous response")):
        with pytest.raises(error) as e:
            call()
        message = e.value.body["message"]
        assert message.startswith(f"{first} with id '{made.id}' not found.")
        assert "VLLM_ENABLE_RESPONSES_API_STORE=1" in message and "models.plain.responses_store.enabled" in message
