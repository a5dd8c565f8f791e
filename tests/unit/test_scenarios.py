"""Load scenarios: every shipped file validates, arrival processes are what they say, and
goodput is computed against the SLO."""

import statistics

import pytest
from pydantic import ValidationError

from cluster.bench.driver import SLO, RequestResult, goodput, summarise
from cluster.bench.scenario import Arrival, Scenario, load_scenario, shipped_scenarios

SHIPPED = shipped_scenarios()


def test_the_promised_scenarios_ship():
    assert {"chat-multilingual", "summarisation", "translation", "code", "shared-prefix", "bursty"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_scenario_validates(name):
    sc = load_scenario(name)
    assert sc.name == name
    assert sc.first_messages(0)[-1]["role"] == "user"
    # Prompt plus every turn's output fits the demo model's 1024-token context
    # (the demo tokenizer spends about 0.7 tokens per character).
    assert 0.7 * len(sc.completion_prompt(0)) + sc.prompts.turns * (sc.prompts.max_tokens + 40) < 1024


def test_multilingual_chat_is_multilingual():
    texts = " ".join(load_scenario("chat-multilingual").prompts.texts)
    for word in ("Bonjour", "Hello", "Qué", "Guten", "Ciao"):
        assert word in texts


def test_unknown_scenario_and_keys_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="known: "):
        load_scenario("nope")
    with pytest.raises(ValidationError):
        Scenario.model_validate({"name": "x", "description": "x", "conversations": 1, "arrival": {"kind": "closed"},
                                 "prompts": {"texts": ["a"]}, "typo": 1})
    with pytest.raises(ValidationError, match="rate is required"):
        Arrival(kind="poisson")


@pytest.mark.parametrize(
    "arrival, n, expected",
    [
        (Arrival(kind="closed"), 3, None),
        (Arrival(kind="constant", rate=4), 4, [0, 0.25, 0.5, 0.75]),
        (Arrival(kind="bursts", burst_size=2, burst_interval_s=3), 5, [0, 0, 3, 3, 6]),
    ],
)
def test_deterministic_arrivals(arrival, n, expected):
    assert arrival.start_times(n) == expected


def test_poisson_arrivals_are_seeded_with_the_right_rate():
    a = Arrival(kind="poisson", rate=10, seed=3)
    times = a.start_times(2000)
    assert times == a.start_times(2000) and times != Arrival(kind="poisson", rate=10, seed=4).start_times(2000)
    gaps = [b - x for x, b in zip(times, times[1:])]
    assert statistics.mean(gaps) == pytest.approx(0.1, rel=0.1)
    assert statistics.stdev(gaps) == pytest.approx(0.1, rel=0.15)  # exponential: sd = mean


def test_sweep_points_set_concurrency_or_rate():
    sc = load_scenario("chat-sweep")
    assert [sc.at(v).arrival.concurrency for v in sc.sweep] == [1, 4, 16, 32]
    t = load_scenario("translation")
    assert t.at(9).arrival.rate == 9.0


def test_shared_prefix_variants_and_turns():
    sc = load_scenario("shared-prefix")
    systems = {sc.first_messages(i)[0]["content"] for i in range(8)}
    assert len(systems) == sc.prompts.prefix_variants == 4
    assert sc.first_messages(0)[0]["content"] == sc.first_messages(4)[0]["content"]
    assert sc.prompts.turns == 3


@pytest.mark.parametrize(
    "result, good",
    [
        (RequestResult(ok=True, status=200, ttft_s=0.2, itl_s=[0.01, 0.03]), True),
        (RequestResult(ok=True, status=200, ttft_s=0.6, itl_s=[0.01]), False),   # TTFT over
        (RequestResult(ok=True, status=200, ttft_s=0.2, itl_s=[0.05, 0.07]), False),  # mean ITL 0.06 over
        (RequestResult(ok=True, status=200, ttft_s=0.5, itl_s=[]), True),  # bounds are inclusive
        (RequestResult(ok=False, status=503, error_type="http_503"), False),
    ],
)
def test_slo(result, good):
    assert SLO(ttft_s=0.5, itl_s=0.05).met(result) is good


def test_goodput_and_errors_by_type():
    rs = [RequestResult(ok=True, status=200, ttft_s=0.1), RequestResult(ok=True, status=200, ttft_s=0.9),
          RequestResult(ok=False, status=429, error="x", error_type="http_429"),
          RequestResult(ok=False, status=0, error="t", error_type="timeout")]
    assert goodput(rs, SLO(0.5, 0.1)) == 0.25 and goodput([], SLO(1, 1)) is None
    s = summarise("t", 1, rs, 1.0, slo=SLO(0.5, 0.1))
    assert s.goodput == 0.25 and s.errors_by_type == {"http_429": 1, "timeout": 1}
