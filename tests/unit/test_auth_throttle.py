"""Failed authentications limited per real client address; valid keys never refused."""

from __future__ import annotations

import pytest

from cluster.gateway.auth.authenticator import Authenticator, KeyStore, parse_networks
from cluster.gateway.auth.throttle import FailedAuthLimiter, client_address
from cluster.gateway.errors import OpenAIError

PROXIES = parse_networks(["10.1.0.0/16", "192.168.0.1"])


@pytest.mark.parametrize(("peer", "xff", "client"), [
    ("203.0.113.5", None, "203.0.113.5"),
    ("203.0.113.5", "1.2.3.4", "203.0.113.5"),          # an untrusted peer's XFF proves nothing
    ("10.1.2.3", None, "10.1.2.3"),
    ("10.1.2.3", "1.2.3.4", "1.2.3.4"),
    ("10.1.2.3", "6.6.6.6, 1.2.3.4", "1.2.3.4"),          # right-most untrusted hop
    ("10.1.2.3", "1.2.3.4, 10.1.9.9", "1.2.3.4"),         # skipping trusted hops
    ("10.1.2.3", "10.1.0.7, 192.168.0.1", "10.1.0.7"),    # all trusted: the left-most
    ("10.1.2.3", "junk, 1.2.3.4", "1.2.3.4"),
    ("10.1.2.3", "1.2.3.4, junk", "10.1.2.3"),            # a malformed chain: the peer
    (None, None, None),
])
def test_client_address(peer, xff, client):
    headers = {b"x-forwarded-for": xff.encode()} if xff else {}
    assert client_address(headers, peer, PROXIES) == client


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_the_budget_is_a_token_bucket_per_address():
    clock = Clock()
    lim = FailedAuthLimiter(per_minute=60, burst=3, clock=clock)
    assert [lim.failed("a") for _ in range(3)] == [0, 0, 0]
    assert lim.failed("a") == pytest.approx(1.0)
    assert lim.failed("b") == 0  # another address has its own budget
    clock.t = 2.0
    assert lim.failed("a") == 0
    assert FailedAuthLimiter.retry_after(0.2) == "1"


def test_the_address_table_is_bounded():
    lim = FailedAuthLimiter(per_minute=1, burst=1, max_addresses=10)
    for i in range(100):
        lim.failed(f"10.0.0.{i}")
    assert len(lim._buckets) == 10


def test_a_brute_forcing_address_is_throttled_and_a_valid_key_from_it_is_not():
    auth = Authenticator(keys=KeyStore({"good": "team"}), throttle=FailedAuthLimiter(per_minute=1, burst=2))
    seen = []
    auth.on_failure = lambda code, throttled: seen.append((code, throttled))

    def call(key):
        try:
            return auth.tenant({b"authorization": f"Bearer {key}".encode()}, "198.51.100.7")
        except OpenAIError as e:
            return e.status

    assert [call(f"bad{i}") for i in range(4)] == [401, 401, 429, 429]
    assert call("good") == "team"
    assert seen == [("invalid_api_key", False)] * 2 + [("invalid_api_key", True)] * 2
