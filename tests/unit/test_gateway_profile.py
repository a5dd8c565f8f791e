"""loadtests.gateway_profile's summary of py-spy's collapsed stacks: own and inclusive shares."""

from loadtests.gateway_profile import summarise

RAW = """process 1:"python";run (uvloop/__init__.py:105);respond (/repo/cluster/gateway/stream/relay.py:40);write (/repo/cluster/gateway/edge/client_writer.py:44) 6
process 1:"python";run (uvloop/__init__.py:105);respond (/repo/cluster/gateway/stream/relay.py:40) 2
process 1:"python";run (uvloop/__init__.py:105) 2
not a sample line
"""


def test_own_and_inclusive_shares():
    doc = summarise(RAW, top=5)
    assert doc["samples"] == 10
    own, incl = dict(doc["own"]), dict(doc["inclusive"])
    assert own == {"write (/repo/cluster/gateway/edge/client_writer.py)": 0.6,
                   "respond (/repo/cluster/gateway/stream/relay.py)": 0.2, "run (uvloop/__init__.py)": 0.2}
    assert incl["run (uvloop/__init__.py)"] == 1.0 and incl["respond (/repo/cluster/gateway/stream/relay.py)"] == 0.8
