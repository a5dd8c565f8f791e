"""The simulator's mixed traffic and burst sizing: a batch backlog at the lowest priority
changes no scaling decision (unless its budget allows) and raises utilisation; burst sizing
asks for a burst's replicas in one step where the stepping rule climbs; standing headroom
serves a spike shorter than a replica's start-up."""

from __future__ import annotations

from cluster.capacity.replay import Setup, owc_only, sized
from cluster.capacity.simulator import EngineProfile, TraceRequest, simulate
from cluster.capacity.sim_policies import OwcPolicy
from cluster.config.schema import Autoscaling, Replicas

PROFILE = EngineProfile(max_num_seqs=8, prefill_tokens_per_s=10_000, decode_step_base_s=0.01,
                        decode_step_per_seq_s=0.001, startup_s=10, kv_capacity_tokens=16_000)
BOUNDS = Replicas(min=1, max=8)
S = Autoscaling(enabled=True, target_ongoing_per_replica=8, target_queue_per_replica=2, ttft_slo_s=0.5,
                up_cooldown_s=10, down_cooldown_s=30, down_stabilization_s=30, max_step_up=1, max_step_down=8)


def constant(rate: float, seconds: float, start: float = 0.0, prompt: int = 100, output: int = 50):
    return [TraceRequest(start + i / rate, prompt, output) for i in range(int(rate * seconds))]


LOAD = constant(4, 60) + constant(30, 40, start=60) + constant(4, 120, start=100)
BACKLOG = [TraceRequest(0.0, 200, 100) for _ in range(3000)]


def test_batch_backlog_changes_no_decision_and_raises_utilisation():
    setup = Setup(PROFILE, S, BOUNDS, owc_interval_s=5)
    alone, mixed = owc_only(LOAD, setup), owc_only(LOAD, setup, batch=BACKLOG)
    assert mixed.events == alone.events and abs(mixed.attainment - alone.attainment) < 0.01
    assert mixed.utilization > alone.utilization + 0.1 and mixed.batch_done > 0
    assert alone.batch_done == 0 and alone.batch_requests == 0


def test_batch_budget_lets_the_backlog_hold_replicas():
    budget = Setup(PROFILE, S.model_copy(update={"batch_max_replicas": 5}), BOUNDS, owc_interval_s=5)
    r = owc_only(LOAD, budget, batch=BACKLOG)
    assert r.events[0]["to"] == 5 and r.events[0]["t"] == 0 and r.peak_replicas <= BOUNDS.max
    assert owc_only(LOAD, budget).events[0]["to"] < 5  # no backlog: the budget holds nothing


def test_interactive_requests_preempt_batch_lines():
    one = Replicas(min=1, max=1)
    alone = simulate(LOAD[:200], PROFILE, OwcPolicy(S, one), slo_s=1.0)
    mixed = simulate(LOAD[:200], PROFILE, OwcPolicy(S, one), slo_s=1.0, batch=BACKLOG[:500])
    assert mixed.attainment == alone.attainment == 1.0 and mixed.batch_done > 0


def test_burst_sizing_asks_at_the_burst_start_where_stepping_climbs():
    stepping = simulate(LOAD, PROFILE, OwcPolicy(S, BOUNDS, interval_s=5), slo_s=1.0)  # no replica capacity
    burst = owc_only(LOAD, Setup(PROFILE, S, BOUNDS, owc_interval_s=5))
    ups = [e for e in burst.events if e["to"] > e["from"]]
    climbs = [e for e in stepping.events if e["to"] > e["from"]]
    assert len(ups) < len(climbs) and max(e["to"] - e["from"] for e in ups) > S.max_step_up
    assert burst.attainment > stepping.attainment


def test_standing_headroom_serves_a_spike_shorter_than_a_start_up():
    slow = EngineProfile(**{**PROFILE.__dict__, "startup_s": 60})
    spike = constant(4, 60) + constant(20, 20, start=60) + constant(4, 60, start=80)
    base = Autoscaling(**{**S.model_dump(), "max_step_up": 8})
    without = owc_only(spike, Setup(slow, base, BOUNDS, owc_interval_s=5))
    with_headroom = owc_only(spike, Setup(slow, base.model_copy(update={"standing_headroom": 2}), BOUNDS,
                                          owc_interval_s=5))
    assert without.attainment < 0.9 <= 0.99 <= with_headroom.attainment
    quiet = constant(4, 300)  # what the headroom costs where no spike comes
    costs = [owc_only(quiet, Setup(slow, base.model_copy(update={"standing_headroom": h}), BOUNDS)).replica_hours
             for h in (0, 2)]
    assert costs[1] > costs[0] + 0.1


def test_sizing_comes_from_the_profile_and_the_trace_mix():
    s = sized(S, PROFILE, LOAD)
    assert s.replica_capacity_rps == PROFILE.capacity_rps(100, 50) and s.replica_startup_s == PROFILE.startup_s
    fixed = sized(S.model_copy(update={"replica_capacity_rps": 3.0, "replica_startup_s": 5.0}), PROFILE, LOAD)
    assert (fixed.replica_capacity_rps, fixed.replica_startup_s) == (3.0, 5.0)
