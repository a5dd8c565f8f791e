"""Flow control in front of saturated engines: the fair queue and its order. Pure policy: no
HTTP server or client library is imported here (tests/unit/test_boundaries.py)."""
