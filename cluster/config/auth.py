"""Who may call the gateway: JWTs from an upstream API gateway, per-tenant allow-lists."""

from __future__ import annotations

from pydantic import Field, model_validator

from cluster.config.base import StrictModel
from cluster.config.responses import ReasoningPolicy


class JwtConfig(StrictModel):
    """`Authorization: Bearer <JWT>` from an upstream API gateway (Kong, Apigee, Envoy, LiteLLM)."""

    jwks_file: str | None = Field(None, description="JWKS (JSON Web Key Set) file the tokens' signing keys are in.")
    jwks_url: str | None = Field(None, description="JWKS URL, read at start and every jwks_refresh_s in the background.")
    jwks_refresh_s: float = Field(300.0, gt=0, description="Seconds between JWKS reads from jwks_url.")
    issuer: str = Field(..., min_length=1, description="Required `iss` claim.")
    audience: str = Field(..., min_length=1, description="Required `aud` claim.")
    tenant_claim: str = Field("tenant", min_length=1, description="Claim whose value is the tenant.")
    algorithms: list[str] = Field(["RS256", "ES256"], min_length=1, description="Accepted signing algorithms.")
    leeway_s: float = Field(30.0, ge=0, description="Clock skew allowed on exp/nbf/iat, seconds.")

    @model_validator(mode="after")
    def _one_source(self) -> JwtConfig:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("set exactly one of jwks_file and jwks_url")
        if any(a.lower() == "none" or a.startswith("HS") for a in self.algorithms):
            raise ValueError("only asymmetric algorithms (RS*, PS*, ES*, EdDSA): a JWKS holds public keys")
        return self


class TenantConfig(StrictModel):
    requests_per_minute: float | None = Field(
        None, gt=0, description="Sustained request rate allowed (token bucket); beyond it 429 with Retry-After."
    )
    burst: int | None = Field(
        None, ge=1, description="Requests allowed at once above the sustained rate (default: a tenth of a minute's worth, at least 1)."
    )
    max_concurrent: int | None = Field(None, ge=1, description="Requests in flight at once; beyond it 429.")
    tokens_per_minute: float | None = Field(
        None, gt=0, description="Sustained tokens (prompt + output) per minute, a minute's worth at once; each request "
        "reserves its prompt estimate plus its output allowance before the work and is settled with the engine's usage.",
    )
    daily_tokens: int | None = Field(
        None, ge=1, description="Tokens per UTC day; beyond it 429 insufficient_quota until the next UTC midnight.",
    )
    monthly_tokens: int | None = Field(
        None, ge=1, description="Tokens per UTC calendar month; beyond it 429 insufficient_quota until the next month.",
    )
    batch_daily_tokens: int | None = Field(
        None, ge=1, description="Tokens per UTC day of this tenant's Batch API lines (docs/batch.md), besides its daily "
        "and monthly quotas (which batch lines count against too; its per-minute limits they do not); beyond it the "
        "batch's remaining lines go to its error file with 429 insufficient_quota.",
    )
    models: list[str] | None = Field(
        None, description="Served models this tenant may use (None: all). Others answer 403 and are absent from its "
        "/v1/models.",
    )
    adapters: list[str] | None = Field(
        None, description="LoRA adapters this tenant may use (None: all of its models' adapters); others answer 403.",
    )
    weight: float = Field(
        1.0, gt=0, le=1000, description="Share of a saturated model's engine slots against the other tenants of its "
        "priority class (gateway.fair_sharing): a weight-2 tenant gets twice a weight-1 tenant's when both wait.",
    )
    priority: int = Field(
        0, ge=0, le=9, description="Class for fair sharing: a higher class's waiting requests are handed engine slots "
        "first; tenants within a class share by weight.",
    )
    max_n: int | None = Field(None, ge=1, le=128, description="This tenant's `n` cap (default: gateway.limits.max_n).")
    max_best_of: int | None = Field(None, ge=1, description="This tenant's `best_of` cap (default: gateway.limits).")
    max_prompts: int | None = Field(None, ge=1, description="This tenant's prompt-list cap (default: gateway.limits).")
    max_output_tokens: int | None = Field(
        None, ge=1, description="This tenant's output-token cap (default: gateway.limits.max_output_tokens).",
    )
    reasoning: ReasoningPolicy | None = Field(
        None, description="This tenant's reasoning exposure on every model (default: each model's `reasoning`).",
    )


TenantLimits = TenantConfig  # the section's earlier name
