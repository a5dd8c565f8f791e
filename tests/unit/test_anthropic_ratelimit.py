"""Anthropic's rate-limit headers from OpenAI's (cluster.gateway.anthropic.ratelimit)."""

from __future__ import annotations

import pytest

from cluster.gateway.anthropic.ratelimit import anthropic_headers, reset_seconds
from cluster.tenancy.charging import Window, format_reset, ratelimit_header_pairs


@pytest.mark.parametrize("value, seconds", [
    (b"0s", 0.0), (b"1s", 1.0), (b"6m0s", 360.0), (b"1h2m3s", 3723.0), (b"250ms", 0.25),
    (b"", None), (b"1.5s", None), (b"5", None), (b"s", None), (b"1s ", None), (b"1d", None),
])
def test_reset_seconds(value, seconds):
    assert reset_seconds(value) == seconds


@pytest.mark.parametrize("seconds", [0, 0.25, 1, 59.2, 360, 3723])
def test_every_reset_the_gateway_writes_is_read_back(seconds):
    assert reset_seconds(format_reset(seconds).encode()) == pytest.approx(max(0, seconds), abs=1)


def test_the_headers_anthropic_names():
    headers = [(b"content-type", b"application/json"),
               *ratelimit_header_pairs(Window(10, 3.7, 6), Window(1_000_000, 250_000, 90))]
    assert dict(anthropic_headers(headers, clock=lambda: 1764979200.0)) == {
        b"anthropic-ratelimit-requests-limit": b"10", b"anthropic-ratelimit-requests-remaining": b"3",
        b"anthropic-ratelimit-requests-reset": b"2025-12-06T00:00:06Z",
        b"anthropic-ratelimit-tokens-limit": b"1000000", b"anthropic-ratelimit-tokens-remaining": b"250000",
        b"anthropic-ratelimit-tokens-reset": b"2025-12-06T00:01:30Z",
    }


@pytest.mark.parametrize("headers", [
    [],
    [(b"x-request-id", b"abc")],
    [(b"x-ratelimit-reset-requests", b"soon")],  # not OpenAI's form: left out, not guessed
    [(b"x-ratelimit-limit-widgets", b"3")],
])
def test_nothing_else_becomes_an_anthropic_header(headers):
    assert anthropic_headers(headers) == []


def test_a_reset_under_a_second_is_never_given_as_a_time_already_past():
    headers = [(b"x-ratelimit-reset-requests", b"250ms")]
    assert anthropic_headers(headers, clock=lambda: 1764979200.5) == [
        (b"anthropic-ratelimit-requests-reset", b"2025-12-06T00:00:01Z")]
