"""Histogram buckets of the gateway's latency metrics. The TTFT SLO of the recording rules
(a chart value, `monitoring.ttftSloSeconds`) must be one of TTFT_BUCKETS, or its rules
read an empty series; the chart's values schema takes its allowed values from here."""

from __future__ import annotations

# 10 ms ... 60 s: request latency. TTFT adds 2 s, the SLO `autoscaling.ttft_slo_s` defaults
# to. Inter-token latency adds finer low buckets (a token every 2-20 ms is normal on GPUs).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
TTFT_BUCKETS = tuple(sorted({*LATENCY_BUCKETS, 2.0}))
ITL_BUCKETS = (0.001, 0.0025, 0.005, *LATENCY_BUCKETS)
