"""Extended thinking through the Messages API on gpt-oss: Anthropic's SDK asks for it with
``thinking={"type": "enabled", "budget_tokens": N}`` (Claude Code does by default). vLLM 0.32
refuses that budget (400: ``thinking_token_budget`` needs a ``reasoning_config``, which gpt-oss's
reasoning parser never sets up), so the gateway asks a harmony engine for adaptive thinking
instead — the model still reasons, within ``max_tokens`` — after checking the budget as
Anthropic does. The fake engine refuses an ``enabled`` budget as vLLM does."""

from __future__ import annotations

import anthropic
import pytest
import yaml

from tests.conftest import fake_engine_argv, gateway_argv, server

MODEL = "gpt-oss-fake"  # harmony by its name (OwcConfig's ModelConfig.harmony)
ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    d = tmp_path_factory.mktemp("thinking")
    cfg = d / "owc.yaml"
    cfg.write_text(yaml.safe_dump({
        "models": {MODEL: {"source": "external"}},
        "gateway": {"api_keys_env": "THINK_TEST_KEYS", "access_log": {"enabled": False}},
    }))
    with server(fake_engine_argv(MODEL, itl_ms=1)) as e, \
            server(gateway_argv(f"{MODEL}={e.url}", config=str(cfg)), env={"THINK_TEST_KEYS": "sk-t=team"}) as g:
        yield anthropic.Anthropic(base_url=g.url, api_key="sk-t", max_retries=0, timeout=30)


def test_enabled_thinking_answers_with_thinking_blocks(client):
    thinking = {"type": "enabled", "budget_tokens": 1024}
    msg = client.messages.create(model=MODEL, max_tokens=2048, thinking=thinking, messages=ASK)
    assert [b.type for b in msg.content] == ["thinking", "text"] and msg.content[0].signature
    with client.messages.stream(model=MODEL, max_tokens=2048, thinking=thinking, messages=ASK) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert client.messages.count_tokens(model=MODEL, thinking=thinking, messages=ASK).input_tokens > 0


@pytest.mark.parametrize("thinking,max_tokens", [({"type": "enabled", "budget_tokens": 1000}, 2048),
                                                 ({"type": "enabled", "budget_tokens": 2048}, 2048)])
def test_a_budget_anthropic_refuses_is_still_a_400(client, thinking, max_tokens):
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model=MODEL, max_tokens=max_tokens, thinking=thinking, messages=ASK)
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert "budget_tokens" in err.value.body["error"]["message"]
