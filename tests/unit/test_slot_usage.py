"""A tenant's slots held on average (an exponentially weighted time average), the credit a
light tenant has against its fair share and the debt of the tenants over theirs
(cluster.gateway.flowcontrol.slot_usage), as tables."""

from __future__ import annotations

import math

import pytest

from cluster.gateway.flowcontrol.shared import Counts
from cluster.gateway.flowcontrol.slot_usage import SlotUsage, balance, credit

# (changes: [(time, count held until then)], read at, count held since the last change, expected)
AVERAGE_CASES = [
    ("never held: 0", [], 10.0, 3, 0.0),
    ("held 2 for one tau from 0", [(0.0, 0)], 5.0, 2, 2 * (1 - math.exp(-1))),
    ("held 2 long: 2", [(0.0, 0)], 500.0, 2, 2.0),
    ("held 6, then 0 for one tau", [(0.0, 0), (500.0, 6)], 505.0, 0, 6 * math.exp(-1)),
    ("read at the change: no time, no change", [(0.0, 0), (5.0, 4)], 5.0, 9, 4 * (1 - math.exp(-1))),
    ("a clock going back counts no time", [(0.0, 0), (500.0, 3)], 400.0, 0, 3.0),
]


@pytest.mark.parametrize("changes,at,count,expected", [c[1:] for c in AVERAGE_CASES], ids=[c[0] for c in AVERAGE_CASES])
def test_average(changes, at, count, expected):
    u = SlotUsage(tau_s=5.0)
    for t, held in changes:
        u.held("A", held, t)
    assert u.average("A", count, at) == pytest.approx(expected)
    assert bool(u) == bool(changes)


# (shares, averages, tenant, expected credit)
CREDIT_CASES = [
    ("light tenant, flood over its share: what it left unused, up to what the flood took",
     {"A": 4, "B": 4}, {"A": 1.0, "B": 6.5}, "A", 2.5),
    ("bounded by what the others took", {"A": 4, "B": 4}, {"A": 0.0, "B": 5.0}, "A", 1.0),
    ("bounded by what it left unused", {"A": 4, "B": 4}, {"A": 3.5, "B": 8.0}, "A", 0.5),
    ("the flood has none", {"A": 4, "B": 4}, {"A": 1.0, "B": 6.5}, "B", 0.0),
    ("both used their shares: none", {"A": 4, "B": 4}, {"A": 4.0, "B": 4.0}, "A", 0.0),
    ("a flood just begun (no average yet): none", {"A": 4, "B": 4}, {"A": 1.0}, "A", 0.0),
    ("weights: shares 6 and 2", {"A": 2, "B": 6}, {"A": 0.5, "B": 7.5}, "A", 1.5),
    ("three tenants: two took over theirs", {"A": 2, "B": 2, "C": 2}, {"A": 0.0, "B": 3.0, "C": 2.5}, "A", 1.5),
    # two light tenants owed what one flood took: split by what each left unused, never more in all
    ("two owed, split evenly", {"A": 2, "B": 2, "C": 2}, {"A": 0.0, "B": 0.0, "C": 4.0}, "A", 1.0),
    ("two owed, split by unused", {"A": 2, "B": 2, "C": 2}, {"A": 0.0, "B": 1.0, "C": 5.0}, "B", 1.0),
    ("a tenant with no share (not active)", {"B": 8}, {"A": 0.0, "B": 8.0}, "A", 0.0),
]


@pytest.mark.parametrize("shares,averages,tenant,expected", [c[1:] for c in CREDIT_CASES],
                         ids=[c[0] for c in CREDIT_CASES])
def test_credit(shares, averages, tenant, expected):
    assert credit(tenant, shares, averages) == pytest.approx(expected)


# (shares, averages, presence of each tenant, expected balance of each: credit +, debt -)
BALANCE_CASES = [
    ("the flood owes the light tenant its credit", {"A": 4, "B": 4}, {"A": 1.0, "B": 6.5}, {}, {"A": 2.5, "B": -2.5}),
    ("both at their shares: nothing", {"A": 4, "B": 4}, {"A": 4.0, "B": 4.0}, {}, {"A": 0.0, "B": 0.0}),
    ("a tenant just arrived is owed nothing, and nothing is owed it", {"A": 4, "B": 4}, {"A": 0.0, "B": 8.0},
     {"A": 0.0}, {"A": 0.0, "B": 0.0}),
    ("two floods owe by how far each is over", {"A": 2, "B": 2, "C": 2}, {"A": 0.0, "B": 3.0, "C": 3.0}, {},
     {"A": 2.0, "B": -1.0, "C": -1.0}),
    ("two owed, one flood owes both", {"A": 2, "B": 2, "C": 2}, {"A": 0.0, "B": 1.0, "C": 5.0}, {},
     {"A": 2.0, "B": 1.0, "C": -3.0}),
    ("a part-present tenant: its part of the credit, and of the debt", {"A": 4, "B": 4}, {"A": 1.0, "B": 6.5},
     {"A": 0.5}, {"A": 1.25, "B": -1.25}),
]


@pytest.mark.parametrize("shares,averages,presence,expected", [c[1:] for c in BALANCE_CASES],
                         ids=[c[0] for c in BALANCE_CASES])
def test_balance(shares, averages, presence, expected):
    got = {t: balance(t, shares, averages, lambda u: presence.get(u, 1.0)) for t in shares}
    assert got == pytest.approx(expected)
    assert sum(got.values()) == pytest.approx(0.0)  # what one is owed, the others owe


def test_credit_is_for_the_time_the_tenant_was_active():
    shares, averages = {"A": 4, "B": 4}, {"A": 1.0, "B": 6.5}
    u = SlotUsage(tau_s=5.0)
    assert u.presence("A", 10.0) == 0.0  # never active here: owed nothing
    u.joined("A", 10.0)
    assert u.presence("A", 10.0) == 0.0  # just arrived: nothing for what B held before
    assert u.presence("A", 15.0) == pytest.approx(1 - math.exp(-1))
    assert u.presence("A", 500.0) == pytest.approx(1.0)
    assert credit("A", shares, averages, u.presence("A", 15.0)) == pytest.approx(2.5 * (1 - math.exp(-1)))
    assert credit("A", shares, averages, 0.0) == 0.0


# (counts, their fields) -- the shared store sums fields as integers; averages in thousandths
FIELDS_CASES = [
    (Counts({"A": 2}, {"r0": 2}, usage={"A": 1.2345}), {"t:A": 2, "r:r0": 2, "u:A": 1234}),
    (Counts({"B": 0}, {}, usage={"B": 0.0001, "C": -1.0}), {"t:B": 0}),  # nothing to publish under half a thousandth
]


@pytest.mark.parametrize("counts,fields", FIELDS_CASES)
def test_averages_travel_in_the_shared_fields(counts, fields):
    assert counts.fields() == fields
    back = Counts.from_fields({**fields, "l:t:A": 1})
    assert back.usage == {t[2:]: v / 1000 for t, v in fields.items() if t.startswith("u:")}
    assert back.tenants == {t[2:]: v for t, v in fields.items() if t.startswith("t:")}
