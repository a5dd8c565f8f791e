"""Caps on what one request may ask an engine for: choices (`n`, `best_of`), prompts in a
list, output tokens. Global defaults in `gateway.limits`, per-tenant overrides in
`gateway.tenants.<name>`; over a cap is a 400 that names the parameter, before any engine
sees the request. Pure: the request's JSON and the caps in, an error or nothing out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cluster.config.schema import Limits, TenantConfig
from cluster.gateway.errors import OpenAIError

# Output-token parameters by API: chat (both names), completions, responses.
OUTPUT_TOKEN_PARAMS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


@dataclass(frozen=True)
class Caps:
    max_n: int
    max_best_of: int
    max_prompts: int
    max_output_tokens: int

    @classmethod
    def for_tenant(cls, limits: Limits, tenant: TenantConfig | None) -> Caps:
        def pick(name: str) -> int:
            own = getattr(tenant, name, None) if tenant is not None else None
            return own if own is not None else getattr(limits, name)

        return cls(*(pick(n) for n in ("max_n", "max_best_of", "max_prompts", "max_output_tokens")))


def prompt_count(prompt: Any) -> int:
    """Prompts in a completions `prompt`: a string or one token-id list is one prompt; a list
    of strings or of token-id lists is that many."""
    if isinstance(prompt, list) and prompt and not all(isinstance(p, int) for p in prompt):
        return len(prompt)
    return 1


def check_caps(data: Mapping[str, Any], caps: Caps) -> None:
    """Raise the 400 naming the first parameter over its cap (``data`` already validated)."""
    for param, cap in (("n", caps.max_n), ("best_of", caps.max_best_of)):
        value = data.get(param)
        if isinstance(value, int) and value > cap:
            raise _over(param, value, cap)
    for param in OUTPUT_TOKEN_PARAMS:
        value = data.get(param)
        if isinstance(value, int) and value > caps.max_output_tokens:
            raise _over(param, value, caps.max_output_tokens)
    if "prompt" in data and (count := prompt_count(data["prompt"])) > caps.max_prompts:
        raise OpenAIError(400, f"'prompt' holds {count} prompts; at most {caps.max_prompts} per request",
                          param="prompt", code="invalid_value")


def _over(param: str, value: int, cap: int) -> OpenAIError:
    return OpenAIError(400, f"'{param}' is {value}; at most {cap} is allowed", param=param, code="invalid_value")


class CapTable:
    """Each tenant's caps, computed once (tenants without their own get the defaults)."""

    def __init__(self, limits: Limits, tenants: Mapping[str, TenantConfig]):
        self._default = Caps.for_tenant(limits, None)
        self._by_tenant = {name: Caps.for_tenant(limits, t) for name, t in tenants.items()}

    def check(self, tenant: str, data: Mapping[str, Any]) -> None:
        check_caps(data, self._by_tenant.get(tenant, self._default))
