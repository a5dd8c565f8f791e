"""owc_reasoning_tokens_total{model,tenant}: the reasoning tokens of the engine's usage report
(chat's completion_tokens_details, Responses' output_tokens_details) counted per model and
tenant when a request is settled; none counted when the usage names none."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from cluster.gateway.context import Delivery
from cluster.gateway.observability.accounting import Accounting, Settled
from cluster.gateway.observability.metrics import GatewayMetrics


class _Routing:
    def policy(self, model: str) -> str:
        return "p2c"


def _settle(accounting: Accounting, usage: dict, route: str = "/v1/chat/completions") -> None:
    d = Delivery()
    d.usage(usage)
    accounting.settle(Settled(request_id="r", route=route, status=200, tenant="t1", model="m"), d)


def _accounting() -> tuple[CollectorRegistry, Accounting]:
    registry = CollectorRegistry()
    return registry, Accounting(metrics=GatewayMetrics(registry), routing=_Routing())


def test_reasoning_tokens_are_counted_by_model_and_tenant():
    registry, accounting = _accounting()
    _settle(accounting, {"prompt_tokens": 5, "completion_tokens": 9, "completion_tokens_details": {"reasoning_tokens": 4}})
    _settle(accounting, {"input_tokens": 5, "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 3}},
            route="/v1/responses")
    value = registry.get_sample_value("owc_reasoning_tokens_total", {"model": "m", "tenant": "t1", "version": "stable"})
    assert value == 7
    assert registry.get_sample_value("owc_completion_tokens_total", {"model": "m", "tenant": "t1", "version": "stable"}) == 16


def test_no_reasoning_in_the_usage_counts_none():
    registry, accounting = _accounting()
    _settle(accounting, {"input_tokens": 5, "output_tokens": 7}, route="/v1/messages")
    assert registry.get_sample_value("owc_reasoning_tokens_total", {"model": "m", "tenant": "t1", "version": "stable"}) is None
