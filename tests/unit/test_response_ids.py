"""Stored-response ids: minted by the gateway, naming model and replica, authenticated for
the tenant (HMAC with the key gateway replicas share); tampering, forgery, another tenant,
another key, expiry → not verified; and the request path: previous_response_id pins the
owner, a stored request carries the minted id as vLLM's request_id on every model (an engine
owc did not start may keep it), store: false none; and each 404 says why where a setting would
change it (cluster.gateway.responses.missing)."""

from __future__ import annotations

import base64

import orjson
import pytest

from cluster.config.schema import OwcConfig
from cluster.discovery.endpoints import Endpoint
from cluster.gateway.context import Job
from cluster.gateway.responses.conversations import Conversations, owner_endpoints
from cluster.gateway.errors import OpenAIError, from_upstream
from cluster.gateway.responses.ids import KEY_ENV, PREFIX, ResponseIds, derive_key

KEY, _ = derive_key(explicit=None, engine_key="engine-secret")


class Clock:
    t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def test_mint_and_verify_round_trip():
    ids = ResponseIds(KEY)
    rid = ids.mint("alpha", "tiny-gpt-oss", "tiny-gpt-oss-1")
    assert rid.startswith(PREFIX) and len(rid) < 120
    o = ids.verify("alpha", rid)
    assert (o.model, o.replica_id) == ("tiny-gpt-oss", "tiny-gpt-oss-1")
    assert rid != ids.mint("alpha", "tiny-gpt-oss", "tiny-gpt-oss-1")  # a nonce: never the same id twice
    # URL-safe: it goes in /v1/responses/{id}
    assert all(c.isalnum() or c in "-_" for c in rid)


def test_every_gateway_replica_agrees_with_the_shared_key():
    a, b = ResponseIds(KEY), ResponseIds(derive_key(explicit=None, engine_key="engine-secret")[0])
    assert b.verify("t", a.mint("t", "m", "r-0")).replica_id == "r-0"
    other = ResponseIds(derive_key(explicit=None, engine_key="another")[0])
    assert other.verify("t", a.mint("t", "m", "r-0")) is None
    explicit = ResponseIds.from_env("engine-secret", {KEY_ENV: "s3cret"})
    assert explicit.verify("t", a.mint("t", "m", "r-0")) is None
    assert ResponseIds.from_env(None, {KEY_ENV: "s3cret"}).verify("t", explicit.mint("t", "m", "r")) is not None
    assert derive_key(explicit=None, engine_key=None)[1] == "random"


def test_other_tenant_id_does_not_verify():
    ids = ResponseIds(KEY)
    assert ids.verify("beta", ids.mint("alpha", "m", "r-0")) is None


def _flip(s: str, i: int) -> str:
    c = s[i]
    return s[:i] + ("A" if c != "A" else "B") + s[i + 1:]


def test_tampering_any_character_fails():
    ids = ResponseIds(KEY)
    rid = ids.mint("alpha", "m", "r-0")
    for i in range(len(PREFIX), len(rid)):
        assert ids.verify("alpha", _flip(rid, i)) is None, i


@pytest.mark.parametrize("bad", [
    "", "resp_", "resp_abc", "resp_" + "A" * 60, "resp_6b2f0c1a9e8d4b7f8a1e2d3c4b5a6978",  # vLLM's own shape
    "msg_" + "A" * 60, "resp_" + "=" * 40, "resp_" + "é" * 40, "resp_" + "A" * 1000, None, 12,
])
def test_malformed_ids_do_not_verify(bad):
    assert ResponseIds(KEY).verify("alpha", bad) is None


def test_forged_payload_with_a_guessed_tag_fails():
    ids = ResponseIds(KEY)
    rid = ids.mint("alpha", "m", "r-0")
    payload = base64.urlsafe_b64decode(rid[5:-22] + "==")
    forged = PREFIX + base64.urlsafe_b64encode(payload.replace(b"r-0", b"r-1")).rstrip(b"=").decode() + rid[-22:]
    assert ids.verify("alpha", forged) is None


def test_ttl():
    clock = Clock()
    ids = ResponseIds(KEY, clock=clock)
    rid = ids.mint("t", "m", "r")
    clock.t += 100
    assert ids.verify("t", rid, ttl_s=101) is not None
    assert ids.verify("t", rid, ttl_s=99) is None


# --- the request path -------------------------------------------------------------------------

CFG = OwcConfig.model_validate({"models": {
    "m": {"source": "external", "responses_store": {"enabled": True, "ttl_s": 60}},
    "plain": {"source": "external"},
    "strip": {"source": "external", "reasoning": {"expose": "strip"}},
}})


def _job(data: dict, *, model: str = "m", tenant: str = "alpha", route: str = "/v1/responses") -> Job:
    return Job(request_id="x", route=route, model=model, tenant=tenant, data=data, body=orjson.dumps(data),
               stream=False, headers={})


EPS = [Endpoint(model="m", replica_id="m-0", url="http://a"), Endpoint(model="m", replica_id="m-1", url="http://b")]


def test_a_stored_request_carries_a_minted_id_for_the_chosen_replica():
    conv = Conversations(CFG, ResponseIds(KEY))
    job = conv.prepare(_job({"model": "m", "input": "hi"}))
    assert job.pin is None and job.body_for is not None
    body = orjson.loads(job.body_for(EPS[1]))
    assert body["input"] == "hi" and conv.ids.verify("alpha", body["request_id"]).replica_id == "m-1"
    assert conv.prepare(_job({"model": "m", "input": "hi", "store": False})).body_for is None  # nothing stored
    # A model whose store owc does not turn on: its engine may keep responses (owc gateway
    # --upstream in front of VLLM_ENABLE_RESPONSES_API_STORE=1): minted all the same.
    plain = conv.prepare(_job({"model": "plain", "input": "hi"}, model="plain"))
    assert conv.ids.verify("alpha", orjson.loads(plain.body_for(EPS[0]))["request_id"]).model == "plain"
    chat = _job({"model": "m", "messages": []}, route="/v1/chat/completions")
    assert conv.prepare(chat) is chat  # nothing to do: the same job


def test_previous_response_id_pins_its_owner():
    conv = Conversations(CFG, ResponseIds(KEY))
    prev = conv.ids.mint("alpha", "m", "m-1")
    job = conv.prepare(_job({"model": "m", "input": "more", "previous_response_id": prev}))
    assert job.pin == "m-1" and [e.url for e in owner_endpoints(job, EPS)] == ["http://b"]
    with pytest.raises(OpenAIError) as e:  # the owner is gone
        owner_endpoints(job, EPS[:1])
    assert e.value.status == 400 and e.value.param == "previous_response_id" and "draining or gone" in e.value.message
    with pytest.raises(OpenAIError):  # the owner is draining
        owner_endpoints(job, [EPS[0], Endpoint(model="m", replica_id="m-1", url="http://b", draining=True)])


@pytest.mark.parametrize("prev, tenant, model", [
    ("resp_0123456789abcdef0123456789abcdef", "alpha", "m"),  # not minted here
    (None, "beta", "m"),  # another tenant's
    (None, "alpha", "plain"),  # another model's
])
def test_unverifiable_previous_id_is_openais_400(prev, tenant, model):
    conv = Conversations(CFG, ResponseIds(KEY))
    prev = prev or conv.ids.mint("alpha", "m", "m-0")
    with pytest.raises(OpenAIError) as e:
        conv.prepare(_job({"model": model, "input": "x", "previous_response_id": prev}, model=model, tenant=tenant))
    assert e.value.body()["error"] == {"message": f"Previous response with id '{prev}' not found.",
                                       "type": "invalid_request_error", "param": "previous_response_id",
                                       "code": "previous_response_not_found"} and e.value.status == 400


def test_strip_policy_marks_the_job():
    conv = Conversations(CFG, ResponseIds(KEY))
    assert conv.prepare(_job({"model": "strip", "messages": []}, model="strip", route="/v1/chat/completions")).strip_reasoning
    assert not conv.prepare(_job({"model": "plain", "input": "x"}, model="plain")).strip_reasoning


# --- the 404s say why (cluster.gateway.responses.missing) ---------------------------------------

def _err(call) -> OpenAIError:
    """A follow-up's refusal: OpenAI's 400 (a 404 there puts a LiteLLM deployment in cooldown)."""
    with pytest.raises(OpenAIError) as e:
        call()
    err = e.value
    assert (err.status, err.param, err.code, err.type) == (400, "previous_response_id", "previous_response_not_found",
                                                           "invalid_request_error")
    return err


def test_an_expired_id_names_ttl_s():
    clock = Clock()
    conv = Conversations(CFG, ResponseIds(KEY, clock=clock))
    prev = conv.ids.mint("alpha", "m", "m-0")
    clock.t += 61
    err = _err(lambda: conv.prepare(_job({"model": "m", "input": "x", "previous_response_id": prev})))
    assert err.message.startswith(f"Previous response with id '{prev}' not found.") and "models.m.responses_store.ttl_s" in err.message
    # A model whose store owc does not bound has no ttl at the gateway: the engine's store answers.
    old = conv.ids.mint("alpha", "plain", "plain-0")
    clock.t += 10_000
    assert conv.prepare(_job({"model": "plain", "input": "x", "previous_response_id": old}, model="plain")).pin == "plain-0"


def test_an_unknown_id_names_the_id_key_only_when_it_is_random():
    prev = "resp_0123456789abcdef0123456789abcdef"
    data = {"model": "m", "input": "x", "previous_response_id": prev}
    shared = _err(lambda: Conversations(CFG, ResponseIds(KEY)).prepare(_job(data)))
    assert shared.message == f"Previous response with id '{prev}' not found."  # says nothing of whose it is
    random = _err(lambda: Conversations(CFG, ResponseIds.from_env(None, {})).prepare(_job(data)))
    assert random.message.startswith(shared.message) and KEY_ENV in random.message


@pytest.mark.parametrize("model, says", [
    ("plain", ["VLLM_ENABLE_RESPONSES_API_STORE=1", "models.plain.responses_store.enabled: true"]),  # store off
    ("m", ["evicted", "models.m.responses_store.max_entries"]),  # owc turned it on: it was evicted
])
def test_the_owners_own_404_names_the_setting(model, says):
    conv = Conversations(CFG, ResponseIds(KEY))
    prev = conv.ids.mint("alpha", model, f"{model}-0")
    job = conv.prepare(_job({"model": model, "input": "x", "previous_response_id": prev}, model=model))
    engines = from_upstream(404, orjson.dumps({"error": {"message": f"Response with id '{prev}' not found.",
                                                         "type": "invalid_request_error", "param": "response_id",
                                                         "code": 404}}))
    err = conv.explain(job, engines)
    assert (err.status, err.param, err.code) == (400, "previous_response_id", "previous_response_not_found")
    assert err.message.startswith("Previous r" + engines.message[1:]) and all(s in err.message for s in says)
    other = OpenAIError(404, "The model `m` does not exist.", param="model")
    assert conv.explain(job, other) is other  # not about the response: as it was
    unpinned = conv.prepare(_job({"model": model, "input": "x"}, model=model))
    assert conv.explain(unpinned, engines) is engines and conv.explain(None, engines) is engines
